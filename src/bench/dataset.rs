//! Benchmark author sets on disk (the `../shared/benchmarks/<set>/` layout):
//! `train.jsonl`, `val.jsonl` and `test.jsonl`, one `{"author", "prompt",
//! "demonstration"}` object per line (`demonstration` may be null).

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One line of a split file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Item {
    pub author: String,
    pub prompt: String,
    /// The author's own text for the prompt (absent in sets without references).
    pub demonstration: Option<String>,
}

/// The three splits of a set.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub dir: PathBuf,
    pub train: Vec<Item>,
    pub val: Vec<Item>,
    pub test: Vec<Item>,
}

/// What one author contributes to a benchmark run.
#[derive(Clone, Debug)]
pub struct AuthorSplit {
    pub author: String,
    /// The first `n` training items: the demonstrations methods learn from.
    pub demos: Vec<Item>,
    /// Held-out prompts every method answers (with the author's text, if any).
    pub test: Vec<Item>,
    /// A held-out text by the author for judges that read one: the first validation
    /// text, else the first training text that is not a demonstration.
    pub reference: String,
}

fn read_split(path: &Path) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: Item =
            serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        if item.author.trim().is_empty() || item.prompt.trim().is_empty() {
            bail!(
                "{}:{}: empty \"author\" or \"prompt\"",
                path.display(),
                i + 1
            );
        }
        items.push(item);
    }
    Ok(items)
}

impl Dataset {
    pub fn read(dir: &Path) -> Result<Dataset> {
        Ok(Dataset {
            dir: dir.to_path_buf(),
            train: read_split(&dir.join("train.jsonl"))?,
            val: read_split(&dir.join("val.jsonl"))?,
            test: read_split(&dir.join("test.jsonl"))?,
        })
    }

    /// (author, text) of every training item with a text: what the style judge learns.
    pub fn train_texts(&self) -> Vec<(String, String)> {
        labelled(&self.train)
    }

    /// (author, text) of every test item with a text.
    pub fn test_texts(&self) -> Vec<(String, String)> {
        labelled(&self.test)
    }

    /// The demonstrations (first `n` training texts), held-out prompts and reference
    /// text of `author`. The held-out prompts are the test items, or the validation
    /// items when tuning (`tune`); the reference is then never a validation text.
    pub fn author(&self, author: &str, n: usize, tune: bool) -> Result<AuthorSplit> {
        let of = |items: &[Item]| -> Vec<Item> {
            items
                .iter()
                .filter(|i| i.author == author)
                .cloned()
                .collect()
        };
        let train: Vec<Item> = of(&self.train)
            .into_iter()
            .filter(|i| i.demonstration.is_some())
            .collect();
        let (held_out, split) = if tune {
            (of(&self.val), "val")
        } else {
            (of(&self.test), "test")
        };
        if train.len() < n {
            bail!(
                "{}: author {author:?} has {} training texts; {n} demonstrations were asked for",
                self.dir.join("train.jsonl").display(),
                train.len()
            );
        }
        if held_out.is_empty() {
            bail!(
                "{}: author {author:?} has no prompts",
                self.dir.join(format!("{split}.jsonl")).display()
            );
        }
        let val = if tune { Vec::new() } else { of(&self.val) };
        let reference = val
            .into_iter()
            .chain(train[n..].iter().cloned())
            .find_map(|i| i.demonstration)
            .with_context(|| {
                format!(
                    "{}: author {author:?} has no held-out text to show judges \
                     (a validation text, or a training text beyond the demonstrations)",
                    self.dir.display()
                )
            })?;
        Ok(AuthorSplit {
            author: author.to_owned(),
            demos: train[..n].to_vec(),
            test: held_out,
            reference,
        })
    }
}

fn labelled(items: &[Item]) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| Some((i.author.clone(), i.demonstration.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[&str]) {
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn splits_an_author_and_picks_a_held_out_reference() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "train.jsonl",
            &[
                r#"{"author": "0", "prompt": "p1", "demonstration": "t1"}"#,
                r#"{"author": "1", "prompt": "q1", "demonstration": "u1"}"#,
                r#"{"author": "0", "prompt": "p2", "demonstration": "t2"}"#,
                r#"{"author": "0", "prompt": "p3", "demonstration": "t3"}"#,
            ],
        );
        write(
            d.path(),
            "val.jsonl",
            &[r#"{"author": "1", "prompt": "q2", "demonstration": "u2"}"#],
        );
        write(
            d.path(),
            "test.jsonl",
            &[
                r#"{"author": "0", "prompt": "p9", "demonstration": null}"#,
                r#"{"author": "1", "prompt": "q9", "demonstration": "u9"}"#,
            ],
        );
        let ds = Dataset::read(d.path()).unwrap();
        let a = ds.author("0", 2, false).unwrap();
        let demos: Vec<&str> = a.demos.iter().map(|i| i.prompt.as_str()).collect();
        assert_eq!(demos, ["p1", "p2"]);
        assert_eq!(a.test.len(), 1);
        // No validation text for author 0: the first training text after the demos.
        assert_eq!(a.reference, "t3");
        assert_eq!(ds.author("1", 1, false).unwrap().reference, "u2");
        // Tuning: validation prompts are held out, so the reference is a training text.
        let tuned = ds.author("1", 0, true).unwrap();
        assert_eq!(
            (tuned.test[0].prompt.as_str(), tuned.reference.as_str()),
            ("q2", "u1")
        );
        assert!(ds.author("0", 1, true).is_err());
        assert_eq!(ds.test_texts(), [("1".to_owned(), "u9".to_owned())]);
        let err = ds.author("0", 4, false).unwrap_err().to_string();
        assert!(err.contains("has 3 training texts; 4"), "{err}");
        assert!(ds.author("7", 1, false).is_err());
    }

    #[test]
    fn a_bad_line_is_named() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "train.jsonl",
            &[
                r#"{"author": "0", "prompt": "p1", "demonstration": "t1"}"#,
                r#"{"author": "0", "demonstration": "t1"}"#,
            ],
        );
        let err = Dataset::read(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("train.jsonl:2: missing field `prompt`"),
            "{err}"
        );
    }
}
