//! `ditto serve` end to end with the default model: the OpenAI-compatible endpoints, an
//! adapter, error replies, and the `llm` judge asking the served model.

use ditto::judge::llm::{LlmJudge, LlmOptions, LlmStats};
use ditto::judge::{Case, Judge, Verdict};
use ditto::model::lora::{Adapter, LoraConfig};
use ditto::model::weights::Proj;
use ditto::model::{Model, fetch};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `ditto serve`, killed when dropped (also when a test fails).
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start `ditto serve --port 0 ARGS` and wait for the line with its URL.
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ditto"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("ditto runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = Server {
            child,
            url: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The first run may fetch the default model.
        let line = rx
            .recv_timeout(Duration::from_secs(900))
            .expect("ditto serve prints the URL it listens on");
        server.url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        server
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let mut resp = match (method, body) {
            ("GET", None) => agent.get(&url).call(),
            ("POST", Some(b)) => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b),
            _ => unreachable!(),
        }
        .expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    }

    fn chat(&self, body: &Value) -> (u16, Value) {
        self.request("POST", "/v1/chat/completions", Some(&body.to_string()))
    }

    /// The reply texts of a successful chat completion.
    fn texts(&self, body: &Value) -> Vec<String> {
        let (status, v) = self.chat(body);
        assert_eq!(status, 200, "{v}");
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A status and an OpenAI error object with a message.
fn assert_error(got: (u16, Value), status: u16, message_part: &str) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(message_part), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
}

/// A PEFT adapter for the default model that visibly changes its replies.
fn write_adapter(dir: &std::path::Path) {
    let model_path = fetch::default_model(&fetch::cache_dir(None)).unwrap();
    let model = Model::load(&model_path).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![Proj::Q, Proj::V],
    };
    let mut adapter = Adapter::init(cfg, &model.config, 1).unwrap();
    for pair in adapter.iter_mut() {
        for (i, b) in pair.b.iter_mut().enumerate() {
            *b = if i % 3 == 0 { 0.2 } else { -0.1 };
        }
    }
    adapter.save(dir, "test").unwrap();
}

#[test]
fn serve_openai_api_and_llm_judge() {
    let adapter_dir = tempfile::tempdir().unwrap();
    write_adapter(adapter_dir.path());
    let adapter_arg = format!("tuned={}", adapter_dir.path().display());
    let server = Server::start(&["--adapter", &adapter_arg]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );

    let (status, models) = server.request("GET", "/v1/models", None);
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "tuned"]);

    // n = 2 with a seed: same seed, same replies; finish reasons and max_tokens hold.
    let req = json!({
        "model": "base",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about the sea."},
        ],
        "n": 2, "temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "seed": 7,
    });
    let (status, v) = server.chat(&req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "base");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 0);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["role"], "assistant");
        assert!(c["message"]["content"].is_string());
        let finish = c["finish_reason"].as_str().unwrap();
        assert!(finish == "stop" || finish == "length", "{finish}");
    }
    let usage = &v["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 10 && (2..=24).contains(&completion), "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    let (_, again) = server.chat(&req);
    assert_eq!(again["choices"], v["choices"]);

    // `stop` cuts the text at the first occurrence of any stop string.
    let greedy = json!({
        "model": "base",
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0, "max_tokens": 16,
    });
    let full = server.texts(&greedy).remove(0);
    let mid = full.char_indices().nth(full.chars().count() / 2).unwrap().0;
    let stop: String = full[mid..].chars().take(2).collect();
    let mut with_stop = greedy.clone();
    with_stop["stop"] = json!(["<never-produced>", stop]);
    let (status, v) = server.chat(&with_stop);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        full[..full.find(&stop).unwrap()]
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    with_stop["stop"] = json!(stop);
    assert_eq!(server.chat(&with_stop).1["choices"], v["choices"]);

    // The adapter is served under its name and changes the replies.
    let mut tuned = greedy.clone();
    tuned["model"] = json!("tuned");
    let (status, v) = server.chat(&tuned);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "tuned");
    assert_ne!(v["choices"][0]["message"]["content"], json!(full));
    // ... and base is still base afterwards.
    assert_eq!(server.texts(&greedy), [full]);

    // Errors: OpenAI error objects, and the server keeps serving.
    let mut unknown = greedy.clone();
    unknown["model"] = json!("gpt-4");
    assert_error(server.chat(&unknown), 404, "gpt-4");
    assert_error(
        server.request("POST", "/v1/chat/completions", Some("{not json")),
        400,
        "invalid request body",
    );
    assert_error(
        server.chat(&json!({"model": "base"})),
        400,
        "missing field `messages`",
    );
    let long = "hello ".repeat(10_000);
    assert_error(
        server.chat(&json!({"model": "base", "messages": [{"role": "user", "content": long}]})),
        400,
        "context",
    );
    let mut too_many = greedy.clone();
    too_many["max_tokens"] = json!(100_000);
    assert_error(server.chat(&too_many), 400, "max_tokens 100000");
    let mut bad_role = greedy.clone();
    bad_role["messages"] = json!([{"role": "tool", "content": "x"}]);
    assert_error(server.chat(&bad_role), 400, "role");
    assert_error(server.request("GET", "/v2/nothing", None), 404, "no route");

    judge_against(&server);
}

/// The `llm` judge asks the served model: both orders, counters, cache, malformed answers.
fn judge_against(server: &Server) {
    let case = Case {
        author: "jo",
        prompt: "Write a note to your team about the coffee machine.",
        reference: "hey all!! quick one - the printer's fixed :) grab your stuff. cheers, jo",
        a: "hey team!! coffee machine's back :) go grab a cup. cheers, jo",
        b: "Dear colleagues, I am pleased to inform you that the coffee machine \
            has been repaired. Kind regards, Josephine Smith",
    };
    let cache = tempfile::tempdir().unwrap();
    let opts = LlmOptions {
        endpoint: format!("{}/v1", server.url),
        model: "base".into(),
        api_key_env: "DITTO_TEST_UNSET_KEY".into(),
        cache_dir: Some(cache.path().to_path_buf()),
        ..LlmOptions::default()
    };
    let judge = LlmJudge::new(opts.clone()).unwrap();
    let j = judge.judge(&case).unwrap();
    eprintln!("llm judge on the default model: {j:?}");
    let unparsed = ["ab", "ba"]
        .iter()
        .filter(|o| {
            assert!(j.detail[o]["raw"].is_string(), "{}", j.detail);
            assert_eq!(j.detail[o]["cached"], false);
            j.detail[o]["answer"].is_null()
        })
        .count();
    let stats = judge.stats();
    assert_eq!(
        stats,
        LlmStats {
            requests: 2,
            cache_hits: 0,
            malformed: unparsed,
            retries: 0,
        }
    );
    // With the worked examples SmolLM2-135M answers in the format, but {"answer": "B"} in
    // both orders (a position bias): the votes disagree once mapped back, a tie.
    assert_eq!(unparsed, 0, "{}", j.detail);
    assert_eq!(j.verdict, Verdict::Tie, "{}", j.detail);

    // The same call again is answered from the cache: no request.
    let again = judge.judge(&case).unwrap();
    assert_eq!(again.verdict, j.verdict);
    for o in ["ab", "ba"] {
        assert_eq!(again.detail[o]["raw"], j.detail[o]["raw"]);
        assert_eq!(again.detail[o]["cached"], true);
    }
    assert_eq!(judge.stats().requests, 2);
    assert_eq!(judge.stats().cache_hits, 2);

    // One token cannot hold a JSON answer: both orders are malformed, the verdict a tie.
    let short = LlmJudge::new(LlmOptions {
        max_tokens: 1,
        cache_dir: None,
        ..opts
    })
    .unwrap();
    let j = short.judge(&case).unwrap();
    assert_eq!(j.verdict, Verdict::Tie);
    assert_eq!(short.stats().malformed, 2, "{}", j.detail);
    assert_eq!(short.stats().requests, 2);
}
