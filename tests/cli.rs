//! The `ditto` binary: bad input exits non-zero with a message naming the problem.

use std::process::Command;

fn ditto(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ditto"))
        .args(args)
        .output()
        .expect("ditto runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let (code, stdout, stderr) = ditto(&[
        "generate",
        "--model",
        "/nonexistent/m.gguf",
        "--prompt",
        "hi",
    ]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("error: loading model /nonexistent/m.gguf"),
        "{stderr}"
    );
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn corrupt_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00short").unwrap();
    let (code, _, stderr) = ditto(&[
        "generate",
        "--model",
        path.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.gguf: not a valid GGUF file"),
        "{stderr}"
    );
    assert!(stderr.contains("truncated"), "{stderr}");
}

#[test]
fn invalid_sampling_options_are_refused_before_loading() {
    let (code, _, stderr) = ditto(&["generate", "--prompt", "hi", "--top-p", "1.5"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--top-p must be in (0, 1], got 1.5"),
        "{stderr}"
    );
}

#[test]
fn generate_json_reports_ids_and_finish_reasons() {
    let (code, stdout, stderr) = ditto(&[
        "generate",
        "--prompt",
        "Say hello.",
        "-n",
        "2",
        "--max-new-tokens",
        "5",
        "--temperature",
        "1",
        "--seed",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["sample_index"], i);
        let ids = l["ids"].as_array().unwrap();
        let finish = l["finish_reason"].as_str().unwrap();
        match finish {
            "length" => assert_eq!(ids.len(), 5),
            "stop" => assert_eq!(ids.last().unwrap(), 2),
            other => panic!("finish reason {other}"),
        }
        assert!(l["text"].is_string());
    }
}

#[test]
fn bad_demonstrations_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "malformed.jsonl",
            "{\"prompt\": \"a\", \"demonstration\": \"b\"}\n{not json\n",
            "malformed.jsonl:2: invalid JSON",
        ),
        (
            "empty.jsonl",
            "{\"prompt\": \"a\", \"demonstration\": \"  \"}\n",
            "empty.jsonl:1: field \"demonstration\" is empty",
        ),
        (
            "dup.jsonl",
            "{\"prompt\": \"a\", \"demonstration\": \"b\"}\n{\"prompt\": \"a\", \"demonstration\": \"b\"}\n",
            "dup.jsonl:2: duplicate of line 1",
        ),
        ("none.jsonl", "\n\n", "no demonstrations in"),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = dir.path().join("run");
        let (code, _, stderr) = ditto(&[
            "train",
            "--demos",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{name}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(!out.exists(), "{name}: nothing is written for bad input");
    }
    // Longer than the context: the default model's context is 8192 tokens.
    let long = dir.path().join("long.jsonl");
    let text = "word ".repeat(9000);
    std::fs::write(
        &long,
        format!("{{\"prompt\": \"a\", \"demonstration\": \"{text}\"}}\n"),
    )
    .unwrap();
    let (code, _, stderr) = ditto(&[
        "sft",
        "--demos",
        long.to_str().unwrap(),
        "--out",
        dir.path().join("s").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("long.jsonl:1:") && stderr.contains("over the limit of 8192 tokens"),
        "{stderr}"
    );
}
