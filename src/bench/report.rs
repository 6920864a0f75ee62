//! The benchmark's report: average head-to-head win rates per author and mean ± SEM
//! (the paper's Table 1), the mean head-to-head matrix, held-out NLL and wall time per
//! method, as `results.json`, `results.md` and a bar chart `winrates.svg`.

use super::run::MethodResult;
use super::winrate::{Tally, mean_sem};
use anyhow::Result;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::path::Path;

/// One author's judged results (methods in the report's order).
pub struct AuthorReport {
    pub author: String,
    pub tally: Tally,
    pub results: Vec<MethodResult>,
}

/// The numbers of a report, ready to write.
pub struct Report {
    pub json: Value,
    pub markdown: String,
    pub svg: String,
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

/// Build the report of `authors` (all judged on the same `methods`).
pub fn build(title: &str, methods: &[&str], authors: &[AuthorReport], judge: Value) -> Report {
    let m = methods.len();
    let rate = |a: &AuthorReport, i: usize| a.tally.average(i);
    let mean: Vec<(f64, f64)> = (0..m)
        .map(|i| {
            mean_sem(
                &authors
                    .iter()
                    .filter_map(|a| rate(a, i))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let h2h: Vec<Vec<Option<f64>>> = (0..m)
        .map(|i| {
            (0..m)
                .map(|j| {
                    let v: Vec<f64> = authors
                        .iter()
                        .filter_map(|a| a.tally.head_to_head(i, j))
                        .collect();
                    (!v.is_empty()).then(|| mean_sem(&v).0)
                })
                .collect()
        })
        .collect();
    let nll = |a: &AuthorReport, i: usize| a.results[i].nll.map(|n| n.per_token);
    let nll_mean: Vec<Option<f64>> = (0..m)
        .map(|i| {
            let v: Vec<f64> = authors.iter().filter_map(|a| nll(a, i)).collect();
            (!v.is_empty()).then(|| mean_sem(&v).0)
        })
        .collect();
    let secs = |i: usize, f: fn(&MethodResult) -> f64| {
        mean_sem(&authors.iter().map(|a| f(&a.results[i])).collect::<Vec<_>>()).0
    };
    let train_s: Vec<f64> = (0..m).map(|i| secs(i, |r| r.train_seconds)).collect();
    let gen_s: Vec<f64> = (0..m).map(|i| secs(i, |r| r.generate_seconds)).collect();

    let per_method = |f: &dyn Fn(usize) -> Value| -> Value {
        Value::Object(
            methods
                .iter()
                .enumerate()
                .map(|(i, name)| ((*name).to_owned(), f(i)))
                .collect::<Map<_, _>>(),
        )
    };
    let per_author = |f: &dyn Fn(&AuthorReport, usize) -> Option<f64>| -> Value {
        Value::Object(
            authors
                .iter()
                .map(|a| (a.author.clone(), per_method(&|i| json!(f(a, i)))))
                .collect(),
        )
    };
    let json = json!({
        "title": title,
        "judge": judge,
        "methods": methods,
        "authors": authors.iter().map(|a| &a.author).collect::<Vec<_>>(),
        "win_rate": {
            "per_author": per_author(&rate),
            "mean": per_method(&|i| json!(mean[i].0)),
            "sem": per_method(&|i| json!(mean[i].1)),
        },
        "head_to_head_mean": per_method(&|i| per_method(&|j| json!(h2h[i][j]))),
        "nll_per_token": {
            "per_author": per_author(&nll),
            "mean": per_method(&|i| json!(nll_mean[i])),
        },
        "seconds_per_author": per_method(&|i| json!({"train": train_s[i], "generate": gen_s[i]})),
    });

    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    let _ = writeln!(
        md,
        "Average head-to-head win rate (%) per author, judge `{}`; a tie counts half.\n\nJudge: `{judge}`\n",
        judge["name"].as_str().unwrap_or("?")
    );
    let header: String = authors.iter().map(|a| format!(" {} |", a.author)).collect();
    let _ = writeln!(md, "| method |{header} mean ± SEM |");
    let _ = writeln!(md, "|---|{}---|", "---|".repeat(authors.len()));
    for (i, name) in methods.iter().enumerate() {
        let cells: String = authors
            .iter()
            .map(|a| format!(" {} |", fmt(rate(a, i), 1)))
            .collect();
        let _ = writeln!(
            md,
            "| {name} |{cells} {:.2} ± {:.2} |",
            mean[i].0, mean[i].1
        );
    }
    let _ = writeln!(
        md,
        "\nHead-to-head, mean over authors: % of games the row method wins against the column method.\n"
    );
    let _ = writeln!(md, "| | {} |", methods.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(m));
    for (i, name) in methods.iter().enumerate() {
        let cells: Vec<String> = h2h[i].iter().map(|v| fmt(*v, 1)).collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nNLL per token of the authors' held-out texts of the prompts' split (lower is better; – where the method has no single model).\n"
    );
    let _ = writeln!(md, "| method |{header} mean |");
    let _ = writeln!(md, "|---|{}---|", "---|".repeat(authors.len()));
    for (i, name) in methods.iter().enumerate() {
        let cells: String = authors
            .iter()
            .map(|a| format!(" {} |", fmt(nll(a, i), 3)))
            .collect();
        let _ = writeln!(md, "| {name} |{cells} {} |", fmt(nll_mean[i], 3));
    }
    let _ = writeln!(
        md,
        "\nWall time per author (mean, seconds): training (SFT included where a method builds on it) and generation.\n"
    );
    let _ = writeln!(md, "| method | train | generate |\n|---|---|---|");
    for (i, name) in methods.iter().enumerate() {
        let _ = writeln!(md, "| {name} | {:.0} | {:.0} |", train_s[i], gen_s[i]);
    }
    let svg = bar_chart(title, methods, &mean);
    Report {
        json,
        markdown: md,
        svg,
    }
}

impl Report {
    /// Write `results.json`, `results.md` and `winrates.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::atomic::write(
            &dir.join("results.json"),
            serde_json::to_string_pretty(&self.json)?.as_bytes(),
        )?;
        crate::atomic::write(&dir.join("results.md"), self.markdown.as_bytes())?;
        crate::atomic::write(&dir.join("winrates.svg"), self.svg.as_bytes())
    }
}

/// Escape text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Bars of mean win rate with ± SEM whiskers, on a 0–100 axis.
fn bar_chart(title: &str, methods: &[&str], mean: &[(f64, f64)]) -> String {
    let (left, top, plot_h, slot) = (60.0, 40.0, 260.0, 90.0);
    let width = left + slot * methods.len() as f64 + 20.0;
    let height = top + plot_h + 60.0;
    let y = |v: f64| top + plot_h * (1.0 - v.clamp(0.0, 100.0) / 100.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    for tick in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ccc"/><text x="{}" y="{}" text-anchor="end">{tick}</text>"##,
            width - 20.0,
            left - 6.0,
            y(tick) + 4.0,
            y = y(tick)
        );
    }
    for (i, (name, &(m, sem))) in methods.iter().zip(mean).enumerate() {
        let x = left + slot * i as f64 + 15.0;
        let w = slot - 30.0;
        if m.is_finite() {
            let _ = writeln!(
                s,
                r##"<rect x="{x}" y="{}" width="{w}" height="{}" fill="#4e79a7"/>"##,
                y(m),
                y(0.0) - y(m)
            );
            let cx = x + w / 2.0;
            let _ = writeln!(
                s,
                r#"<line x1="{cx}" x2="{cx}" y1="{}" y2="{}" stroke="black"/><text x="{cx}" y="{}" text-anchor="middle">{m:.1}</text>"#,
                y(m + sem),
                y(m - sem),
                y(m + sem) - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x + w / 2.0,
            top + plot_h + 18.0,
            esc(name)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">avg head-to-head win rate (%)</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Verdict;

    fn result(method: &str, nll: Option<f64>) -> MethodResult {
        MethodResult {
            author: "x".into(),
            method: method.into(),
            train_seconds: 10.0,
            generate_seconds: 2.0,
            demos_in_context: None,
            outputs: vec![],
            nll: nll.map(|per_token| super::super::run::Nll {
                per_token,
                texts: 1,
            }),
        }
    }

    #[test]
    fn table_has_means_and_standard_errors() {
        let mut authors = Vec::new();
        for (name, verdicts) in [
            ("0", [Verdict::A, Verdict::A]),
            ("1", [Verdict::A, Verdict::B]),
        ] {
            let mut tally = Tally::new(2);
            for v in verdicts {
                tally.add(0, 1, v);
            }
            authors.push(AuthorReport {
                author: name.into(),
                tally,
                results: vec![result("base", Some(3.0)), result("tuned", None)],
            });
        }
        let r = build("t", &["base", "tuned"], &authors, json!({"name": "style"}));
        // base: 100 and 50 → 75 ± 25.
        assert_eq!(r.json["win_rate"]["mean"]["base"], json!(75.0));
        assert_eq!(r.json["win_rate"]["sem"]["base"], json!(25.0));
        assert_eq!(r.json["win_rate"]["per_author"]["1"]["tuned"], json!(50.0));
        assert_eq!(r.json["nll_per_token"]["mean"]["tuned"], Value::Null);
        assert!(
            r.markdown
                .contains("| base | 100.0 | 50.0 | 75.00 ± 25.00 |"),
            "{}",
            r.markdown
        );
        assert!(
            r.markdown.contains("| tuned | – | – | – |"),
            "{}",
            r.markdown
        );
        assert!(r.svg.starts_with("<svg") && r.svg.contains(">75.0</text>"));
    }
}
