//! Reading the user's demonstrations: a JSONL file in which each line is one
//! example of a prompt and the answer the user wants the model to give.
//!
//! Each non-blank line is a JSON object in one of two forms:
//!
//! * flat: `{"prompt": "...", "demonstration": "..."}` with an optional
//!   `"system"`; `"output"`, `"completion"` and `"chosen"` are accepted as
//!   aliases of `"demonstration"` (exactly one of the four may be present);
//! * chat: `{"messages": [{"role": "system", "content": "..."}, {"role": "user",
//!   "content": "..."}, {"role": "assistant", "content": "..."}]}` where the
//!   system message is optional and the roles must come in exactly that order.
//!
//! Unknown extra fields are ignored, blank lines are skipped and a UTF-8 BOM
//! at the start of the file is allowed. An empty or absent system prompt is
//! `None`. Every error names the file, the 1-based line and the field.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};

/// One demonstration: what the user asked and how they want it answered.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Demo {
    pub system: Option<String>,
    pub prompt: String,
    pub demonstration: String,
    /// 1-based line in the source file
    pub line: usize,
}

/// The demonstrations of one file, in file order, with the file's path kept
/// for later error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Demos {
    pub path: PathBuf,
    pub items: Vec<Demo>,
}

/// Field names accepted for the demonstration, in the order they are reported.
const DEMONSTRATION_FIELDS: [&str; 4] = ["demonstration", "output", "completion", "chosen"];

/// How many offending lines `check_lengths` lists besides the first.
const MAX_LISTED_LINES: usize = 10;

/// Reads and validates a JSONL file of demonstrations.
///
/// Fails on the first bad line, on a line that repeats an earlier line's
/// prompt and demonstration, and on a file without any demonstration.
pub fn read_demos(path: &Path) -> Result<Demos> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = path.display();
    let mut items = Vec::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let mut text = std::str::from_utf8(raw)
            .map_err(|e| anyhow!("{file}:{line}: not valid UTF-8 ({e})"))?;
        if index == 0 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        if text.trim().is_empty() {
            continue;
        }
        let demo = parse_line(text, line).map_err(|msg| anyhow!("{file}:{line}: {msg}"))?;
        match seen.entry((demo.prompt.clone(), demo.demonstration.clone())) {
            Entry::Occupied(first) => bail!(
                "{file}:{line}: duplicate of line {} (same prompt and demonstration)",
                first.get()
            ),
            Entry::Vacant(slot) => {
                slot.insert(line);
            }
        }
        items.push(demo);
    }
    if items.is_empty() {
        bail!("no demonstrations in {file}");
    }
    Ok(Demos {
        path: path.to_path_buf(),
        items,
    })
}

impl Demos {
    /// Fails when a demonstration is longer than `max_tokens`, as measured by
    /// `lengths` (the caller's tokenizer and chat formatting). The message
    /// names the file and line of the first offender, its length and the
    /// limit, and lists the other offending lines.
    pub fn check_lengths(&self, lengths: impl Fn(&Demo) -> usize, max_tokens: usize) -> Result<()> {
        let over: Vec<(usize, usize)> = self
            .items
            .iter()
            .map(|demo| (demo.line, lengths(demo)))
            .filter(|&(_, tokens)| tokens > max_tokens)
            .collect();
        let Some(&(line, tokens)) = over.first() else {
            return Ok(());
        };
        let others: Vec<String> = over[1..]
            .iter()
            .take(MAX_LISTED_LINES)
            .map(|(line, _)| line.to_string())
            .collect();
        let also = match over.len() - 1 {
            0 => String::new(),
            n if n > MAX_LISTED_LINES => format!(
                "; {n} more lines are over the limit: {}, ...",
                others.join(", ")
            ),
            1 => format!("; line {} is over the limit too", others[0]),
            n => format!("; {n} more lines are over the limit: {}", others.join(", ")),
        };
        bail!(
            "{}:{line}: demonstration is {tokens} tokens long, over the limit of {max_tokens} tokens{also}",
            self.path.display()
        )
    }
}

/// Parses one non-blank line; the error is reported without file and line.
fn parse_line(text: &str, line: usize) -> Result<Demo, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, got {}", kind(&value)));
    };
    let (system, prompt, demonstration) = match obj.get("messages") {
        Some(messages) => {
            let mut flat = ["system", "prompt"].iter().chain(&DEMONSTRATION_FIELDS);
            if let Some(other) = flat.find(|key| obj.contains_key(**key)) {
                return Err(format!("both \"messages\" and \"{other}\" given"));
            }
            parse_messages(messages)?
        }
        None => parse_flat(&obj)?,
    };
    Ok(Demo {
        system,
        prompt,
        demonstration,
        line,
    })
}

type Parts = (Option<String>, String, String);

fn parse_flat(obj: &Map<String, Value>) -> Result<Parts, String> {
    let system = match obj.get("system") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(not_a_string("system", other)),
    };
    let prompt = obj
        .get("prompt")
        .ok_or_else(|| "missing field \"prompt\"".to_string())?;
    let prompt = non_blank("prompt", prompt)?;

    let present: Vec<&str> = DEMONSTRATION_FIELDS
        .into_iter()
        .filter(|key| obj.contains_key(*key))
        .collect();
    let key = match present.as_slice() {
        [] => {
            return Err(
                "missing field \"demonstration\" (or \"output\"/\"completion\"/\"chosen\")"
                    .to_string(),
            );
        }
        [key] => *key,
        [first, second, ..] => return Err(format!("both \"{first}\" and \"{second}\" given")),
    };
    let demonstration = non_blank(key, &obj[key])?;
    Ok((system, prompt, demonstration))
}

fn parse_messages(messages: &Value) -> Result<Parts, String> {
    let Value::Array(list) = messages else {
        return Err(format!(
            "field \"messages\" must be an array, got {}",
            kind(messages)
        ));
    };
    let mut roles = Vec::with_capacity(list.len());
    for (i, message) in list.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(format!(
                "field \"messages[{i}]\" must be an object, got {}",
                kind(message)
            ));
        };
        for key in ["role", "content"] {
            match message.get(key) {
                Some(Value::String(_)) => {}
                Some(other) => return Err(not_a_string(&format!("messages[{i}].{key}"), other)),
                None => return Err(format!("missing field \"messages[{i}].{key}\"")),
            }
        }
        roles.push(message["role"].as_str().unwrap_or_default());
    }
    let content = |i: usize| non_blank(&format!("messages[{i}].content"), &list[i]["content"]);
    match roles.as_slice() {
        ["user", "assistant"] => Ok((None, content(0)?, content(1)?)),
        ["system", "user", "assistant"] => {
            let system = list[0]["content"].as_str().unwrap_or_default();
            let system = (!system.trim().is_empty()).then(|| system.to_string());
            Ok((system, content(1)?, content(2)?))
        }
        _ => Err(format!(
            "field \"messages\" must hold an optional system message, then one user and one \
             assistant message; got roles [{}]",
            roles.join(", ")
        )),
    }
}

/// The string in `value`, which must not be empty or only whitespace.
fn non_blank(field: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) if s.trim().is_empty() => {
            Err(format!("field \"{field}\" is empty or whitespace"))
        }
        Value::String(s) => Ok(s.clone()),
        other => Err(not_a_string(field, other)),
    }
}

fn not_a_string(field: &str, value: &Value) -> String {
    format!("field \"{field}\" must be a string, got {}", kind(value))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes `content` to `demos.jsonl` in a fresh temporary directory.
    fn file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demos.jsonl");
        fs::File::create(&path)
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        (dir, path)
    }

    fn read(content: &str) -> Result<Demos> {
        let (_dir, path) = file(content);
        read_demos(&path)
    }

    /// The error message for `content`, with the temporary path replaced by
    /// `demos.jsonl`.
    fn error(content: &str) -> String {
        let (_dir, path) = file(content);
        let err = read_demos(&path).unwrap_err().to_string();
        err.replace(&path.display().to_string(), "demos.jsonl")
    }

    fn demo(system: Option<&str>, prompt: &str, demonstration: &str, line: usize) -> Demo {
        Demo {
            system: system.map(str::to_string),
            prompt: prompt.to_string(),
            demonstration: demonstration.to_string(),
            line,
        }
    }

    #[test]
    fn reads_all_forms() {
        let content = "\u{feff}{\"prompt\": \"p1\", \"demonstration\": \"d1\"}\n\
            \n\
            {\"prompt\": \"p2\", \"output\": \"d2\", \"system\": \"s2\", \"extra\": [1]}\r\n\
            {\"prompt\": \"p3\", \"completion\": \" d3 \", \"system\": null}\n\
            {\"prompt\": \"p4\", \"chosen\": \"d4\", \"system\": \"  \"}\n\
            {\"messages\": [{\"role\": \"user\", \"content\": \"p5\"}, \
                {\"role\": \"assistant\", \"content\": \"d5\"}]}\n\
            {\"messages\": [{\"role\": \"system\", \"content\": \"s6\"}, \
                {\"role\": \"user\", \"content\": \"p6\", \"name\": \"x\"}, \
                {\"role\": \"assistant\", \"content\": \"d6\"}], \"id\": 6}\n   \n";
        let demos = read(content).unwrap();
        assert_eq!(
            demos.items,
            vec![
                demo(None, "p1", "d1", 1),
                demo(Some("s2"), "p2", "d2", 3),
                demo(None, "p3", " d3 ", 4),
                demo(None, "p4", "d4", 5),
                demo(None, "p5", "d5", 6),
                demo(Some("s6"), "p6", "d6", 7),
            ]
        );
        assert!(demos.path.ends_with("demos.jsonl"));
    }

    #[test]
    fn field_errors_name_file_line_and_field() {
        let ok = "{\"prompt\": \"p\", \"demonstration\": \"d\"}\n";
        let cases = [
            (
                "{\"prompt\": \" \", \"demonstration\": \"d\"}",
                "demos.jsonl:3: field \"prompt\" is empty or whitespace",
            ),
            (
                "{\"prompt\": \"q\", \"output\": \"\"}",
                "demos.jsonl:3: field \"output\" is empty or whitespace",
            ),
            (
                "{\"prompt\": \"q\"}",
                "demos.jsonl:3: missing field \"demonstration\" (or \"output\"/\"completion\"/\"chosen\")",
            ),
            (
                "{\"demonstration\": \"q\"}",
                "demos.jsonl:3: missing field \"prompt\"",
            ),
            (
                "{\"prompt\": \"q\", \"demonstration\": \"d\", \"output\": \"d\"}",
                "demos.jsonl:3: both \"demonstration\" and \"output\" given",
            ),
            (
                "{\"prompt\": \"q\", \"completion\": \"d\", \"chosen\": \"d\"}",
                "demos.jsonl:3: both \"completion\" and \"chosen\" given",
            ),
            (
                "{\"prompt\": 5, \"demonstration\": \"d\"}",
                "demos.jsonl:3: field \"prompt\" must be a string, got a number",
            ),
            (
                "{\"prompt\": \"q\", \"chosen\": [\"d\"]}",
                "demos.jsonl:3: field \"chosen\" must be a string, got an array",
            ),
            (
                "{\"prompt\": \"q\", \"demonstration\": null}",
                "demos.jsonl:3: field \"demonstration\" must be a string, got null",
            ),
            (
                "{\"prompt\": \"q\", \"demonstration\": \"d\", \"system\": true}",
                "demos.jsonl:3: field \"system\" must be a string, got a boolean",
            ),
            (
                "[\"q\", \"d\"]",
                "demos.jsonl:3: expected a JSON object, got an array",
            ),
        ];
        for (line, expected) in cases {
            let content = format!("{ok}\n{line}\n");
            assert_eq!(error(&content), expected, "for line {line}");
        }
    }

    #[test]
    fn message_errors() {
        let user = "{\"role\": \"user\", \"content\": \"p\"}";
        let assistant = "{\"role\": \"assistant\", \"content\": \"d\"}";
        let system = "{\"role\": \"system\", \"content\": \"s\"}";
        let bad_order = "field \"messages\" must hold an optional system message, then one user \
                         and one assistant message; got roles";
        let cases = [
            (format!("[{user}]"), format!("{bad_order} [user]")),
            (
                format!("[{assistant}, {user}]"),
                format!("{bad_order} [assistant, user]"),
            ),
            (
                format!("[{user}, {assistant}, {user}, {assistant}]"),
                format!("{bad_order} [user, assistant, user, assistant]"),
            ),
            (
                format!("[{user}, {system}, {assistant}]"),
                format!("{bad_order} [user, system, assistant]"),
            ),
            ("[]".to_string(), format!("{bad_order} []")),
            (
                "{}".to_string(),
                "field \"messages\" must be an array, got an object".to_string(),
            ),
            (
                format!("[\"hi\", {assistant}]"),
                "field \"messages[0]\" must be an object, got a string".to_string(),
            ),
            (
                format!("[{{\"role\": \"user\"}}, {assistant}]"),
                "missing field \"messages[0].content\"".to_string(),
            ),
            (
                format!("[{user}, {{\"role\": \"assistant\", \"content\": [1]}}]"),
                "field \"messages[1].content\" must be a string, got an array".to_string(),
            ),
            (
                format!("[{system}, {user}, {{\"role\": \"assistant\", \"content\": \"\\n\"}}]"),
                "field \"messages[2].content\" is empty or whitespace".to_string(),
            ),
        ];
        for (messages, expected) in cases {
            let content = format!("{{\"messages\": {messages}}}\n");
            assert_eq!(
                error(&content),
                format!("demos.jsonl:1: {expected}"),
                "for {messages}"
            );
        }
        let mixed = format!("{{\"prompt\": \"p\", \"messages\": [{user}, {assistant}]}}");
        assert_eq!(
            error(&mixed),
            "demos.jsonl:1: both \"messages\" and \"prompt\" given"
        );
    }

    #[test]
    fn invalid_json_and_utf8() {
        let err = error("{\"prompt\": \"p\", \"demonstration\": \"d\"}\n{\"prompt\": \n");
        assert!(
            err.starts_with("demos.jsonl:2: invalid JSON: EOF while parsing"),
            "{err}"
        );
        let (_dir, path) = file("");
        fs::write(&path, b"\n\xff\xfe\n").unwrap();
        let err = read_demos(&path).unwrap_err().to_string();
        assert!(err.contains("demos.jsonl:2: not valid UTF-8"), "{err}");
    }

    #[test]
    fn duplicates_are_rejected() {
        let content = "{\"prompt\": \"p\", \"demonstration\": \"d\"}\n\
            {\"prompt\": \"p\", \"demonstration\": \"other\"}\n\
            \n\
            {\"messages\": [{\"role\": \"user\", \"content\": \"p\"}, \
                {\"role\": \"assistant\", \"content\": \"d\"}]}\n";
        assert_eq!(
            error(content),
            "demos.jsonl:4: duplicate of line 1 (same prompt and demonstration)"
        );
    }

    #[test]
    fn empty_and_missing_files() {
        assert_eq!(error(""), "no demonstrations in demos.jsonl");
        assert_eq!(
            error("\u{feff}\n  \n\n"),
            "no demonstrations in demos.jsonl"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = read_demos(&dir.path().join("absent.jsonl")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        assert!(err.to_string().ends_with("absent.jsonl"), "{err}");
    }

    #[test]
    fn check_lengths_reports_line_length_and_limit() {
        let content = (1..=15)
            .map(|i| {
                format!(
                    "{{\"prompt\": \"p{i}\", \"demonstration\": \"{}\"}}\n",
                    "x".repeat(i)
                )
            })
            .collect::<String>();
        let (_dir, path) = file(&content);
        let demos = read_demos(&path).unwrap();
        let length = |demo: &Demo| demo.demonstration.len();
        let message = |max: usize| {
            demos
                .check_lengths(length, max)
                .unwrap_err()
                .to_string()
                .replace(&path.display().to_string(), "demos.jsonl")
        };
        assert!(demos.check_lengths(length, 15).is_ok());
        assert_eq!(
            message(14),
            "demos.jsonl:15: demonstration is 15 tokens long, over the limit of 14 tokens"
        );
        assert_eq!(
            message(13),
            "demos.jsonl:14: demonstration is 14 tokens long, over the limit of 13 tokens; \
             line 15 is over the limit too"
        );
        assert_eq!(
            message(10),
            "demos.jsonl:11: demonstration is 11 tokens long, over the limit of 10 tokens; \
             4 more lines are over the limit: 12, 13, 14, 15"
        );
        assert_eq!(
            message(2),
            "demos.jsonl:3: demonstration is 3 tokens long, over the limit of 2 tokens; \
             12 more lines are over the limit: 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, ..."
        );
    }

    #[test]
    fn demo_serializes() {
        let d = demo(Some("s"), "p", "d", 3);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Demo>(&json).unwrap(), d);
    }
}
