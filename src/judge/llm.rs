//! The `llm` judge: the DITTO paper's protocol against any OpenAI-compatible chat
//! endpoint. The model reads a held-out text by the author and two outputs, and answers
//! in JSON which of them the author wrote (after two worked examples of the format);
//! every pair is judged in both orders, requests are retried with exponential backoff
//! and their answers cached on disk.

use super::{Case, Judge, Judgment, Verdict};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SYSTEM: &str = "You are an expert on writing style. You answer with JSON only.";

/// Worked examples shown before every question (one answer of each letter): without
/// them small models rarely answer in the requested format. Each is (author's text,
/// request, response A, response B, answer).
const EXAMPLES: [(&str, &str, &str, &str, &str); 2] = [
    (
        "Dear Ms. Lee, thank you for your letter. Yours sincerely, Tom",
        "Reply to a customer.",
        "Dear Mr. Park, thank you for your order. Yours sincerely, Tom",
        "thx!! order's on its way :)",
        "A",
    ),
    (
        "omg the cake was sooo good lol",
        "Describe your lunch.",
        "Lunch consisted of a salad and a glass of water.",
        "omg lunch was sooo yummy lol",
        "B",
    ),
];

/// Settings of an [`LlmJudge`].
#[derive(Clone, Debug)]
pub struct LlmOptions {
    /// Base URL of the API, up to and including `/v1`.
    pub endpoint: String,
    /// The `model` of every request.
    pub model: String,
    /// Environment variable holding the API key; unset or empty: no `Authorization` header.
    pub api_key_env: String,
    /// Directory of cached answers (one file per request); `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// `max_tokens` of every request.
    pub max_tokens: usize,
    /// Tries per request on transport errors, 429 and 5xx (at least 1).
    pub attempts: usize,
    /// Wait before the first retry; doubled for every further one.
    pub base_delay: Duration,
    /// Limit on one HTTP exchange.
    pub timeout: Duration,
}

impl Default for LlmOptions {
    /// A local `ditto serve` with its default port and model.
    fn default() -> Self {
        LlmOptions {
            endpoint: "http://127.0.0.1:8080/v1".into(),
            model: "base".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            cache_dir: None,
            max_tokens: 32,
            attempts: 5,
            base_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(300),
        }
    }
}

/// What an [`LlmJudge`] did so far, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LlmStats {
    /// HTTP requests sent, retries included.
    pub requests: usize,
    /// Answers read from the cache instead.
    pub cache_hits: usize,
    /// Answers (cached or not) without a parseable `{"answer": "A"|"B"}`.
    pub malformed: usize,
    /// Requests sent again after a transport error, 429 or 5xx.
    pub retries: usize,
}

/// Authorship judge backed by a chat model behind an OpenAI-compatible API.
pub struct LlmJudge {
    url: String,
    model: String,
    api_key: Option<String>,
    cache_dir: Option<PathBuf>,
    max_tokens: usize,
    attempts: usize,
    base_delay: Duration,
    agent: ureq::Agent,
    requests: AtomicUsize,
    cache_hits: AtomicUsize,
    malformed: AtomicUsize,
    retries: AtomicUsize,
}

impl LlmJudge {
    /// A judge with the API key read from `opts.api_key_env`.
    pub fn new(opts: LlmOptions) -> Result<LlmJudge> {
        let key = std::env::var(&opts.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        LlmJudge::with_key(opts, key)
    }

    fn with_key(opts: LlmOptions, api_key: Option<String>) -> Result<LlmJudge> {
        if opts.attempts == 0 {
            bail!("the llm judge needs at least one attempt per request");
        }
        if let Some(dir) = &opts.cache_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_per_call(Some(opts.timeout))
            .build()
            .new_agent();
        Ok(LlmJudge {
            url: format!("{}/chat/completions", opts.endpoint.trim_end_matches('/')),
            model: opts.model,
            api_key,
            cache_dir: opts.cache_dir,
            max_tokens: opts.max_tokens,
            attempts: opts.attempts,
            base_delay: opts.base_delay,
            agent,
            requests: AtomicUsize::new(0),
            cache_hits: AtomicUsize::new(0),
            malformed: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> LlmStats {
        LlmStats {
            requests: self.requests.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// The request body asking which of `first` and `second` the author wrote.
    fn request_body(&self, case: &Case, first: &str, second: &str) -> String {
        let mut messages = vec![json!({"role": "system", "content": SYSTEM})];
        for (reference, prompt, a, b, answer) in EXAMPLES {
            messages.push(json!({"role": "user", "content": question(reference, prompt, a, b)}));
            messages.push(
                json!({"role": "assistant", "content": json!({"answer": answer}).to_string()}),
            );
        }
        let asked = question(case.reference, case.prompt, first, second);
        messages.push(json!({"role": "user", "content": asked}));
        json!({
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.max_tokens,
        })
        .to_string()
    }

    /// The answer's text for `body`, from the cache or the endpoint.
    fn answer(&self, body: &str) -> Result<(String, bool)> {
        let path = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}.txt", cache_key(body))));
        if let Some(p) = &path
            && let Ok(text) = std::fs::read_to_string(p)
        {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((text, true));
        }
        let text = self.post(body)?;
        if let Some(p) = &path {
            crate::atomic::write(p, text.as_bytes())?;
        }
        Ok((text, false))
    }

    /// Send `body`, retrying transport errors, 429 and 5xx; the first choice's content.
    fn post(&self, body: &str) -> Result<String> {
        let mut delay = self.base_delay;
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                self.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(delay);
                delay *= 2;
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                req = req.header("Authorization", format!("Bearer {key}"));
            }
            let last = attempt == self.attempts;
            let mut resp = match req.send(body) {
                Ok(r) => r,
                Err(e) if !last => {
                    eprintln!("llm judge: {}: {e}; retrying", self.url);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("POST {}", self.url)),
            };
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .read_to_string()
                .with_context(|| format!("reading the response of {}", self.url))?;
            if status == 200 {
                return response_content(&text)
                    .with_context(|| format!("unexpected response from {}: {text}", self.url));
            }
            if (status == 429 || status >= 500) && !last {
                eprintln!("llm judge: {} answered {status}; retrying", self.url);
                continue;
            }
            bail!("{} answered {status}: {text}", self.url);
        }
        unreachable!("the last attempt returns")
    }
}

impl Judge for LlmJudge {
    fn name(&self) -> &str {
        "llm"
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(LlmJudge::stats(self)).unwrap_or_default()
    }

    fn judge(&self, case: &Case) -> Result<Judgment> {
        let mut votes = [Verdict::Tie; 2];
        let mut raw = Vec::with_capacity(2);
        for (i, (first, second)) in [(case.a, case.b), (case.b, case.a)].into_iter().enumerate() {
            let (text, cached) = self.answer(&self.request_body(case, first, second))?;
            let parsed = parse_answer(&text);
            if parsed.is_none() {
                self.malformed.fetch_add(1, Ordering::Relaxed);
            }
            votes[i] = parsed.unwrap_or(Verdict::Tie);
            raw.push(json!({"raw": text, "answer": parsed, "cached": cached}));
        }
        let [ab, ba] = votes;
        let [raw_ab, raw_ba] = <[Value; 2]>::try_from(raw).expect("two orders");
        Ok(Judgment {
            verdict: Verdict::combine(ab, ba.swapped()),
            detail: json!({"ab": raw_ab, "ba": raw_ba}),
        })
    }
}

/// The question for one order of a pair.
fn question(reference: &str, prompt: &str, first: &str, second: &str) -> String {
    format!(
        "Author's text:\n{reference}\n\nRequest: {prompt}\n\n\
         Response A:\n{first}\n\nResponse B:\n{second}\n\n\
         Which response was written by the author of the author's text? Compare the \
         writing style: tone, vocabulary, punctuation, greetings and sign-offs. Answer \
         with JSON, either {{\"answer\": \"A\"}} or {{\"answer\": \"B\"}}."
    )
}

/// The content of the first choice of a chat completion response (`null` reads as "").
fn response_content(text: &str) -> Result<String> {
    let v: Value = serde_json::from_str(text).context("the response is not JSON")?;
    match &v["choices"][0]["message"]["content"] {
        Value::String(s) => Ok(s.clone()),
        Value::Null if v["choices"][0]["message"].is_object() => Ok(String::new()),
        _ => bail!("the response has no choices[0].message.content"),
    }
}

/// Cache file stem of a request: hex SHA-256 of its body.
fn cache_key(body: &str) -> String {
    Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The verdict in an answer: every JSON object in it (also inside code fences or
/// surrounded by text) with an `answer` of "A" or "B" (any case) must agree; `None`
/// when there is none, or both letters.
pub fn parse_answer(text: &str) -> Option<Verdict> {
    let mut found = None;
    for (i, _) in text.match_indices('{') {
        let mut objects = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        let Some(Ok(v)) = objects.next() else {
            continue;
        };
        let Some(answer) = v.get("answer") else {
            continue;
        };
        let verdict = match answer
            .as_str()
            .map(|s| s.trim().to_ascii_uppercase())
            .as_deref()
        {
            Some("A") => Verdict::A,
            Some("B") => Verdict::B,
            _ => return None,
        };
        if found.is_some_and(|f| f != verdict) {
            return None;
        }
        found = Some(verdict);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> Case<'static> {
        Case {
            author: "x",
            prompt: "Write a note.",
            reference: "Hi all, quick one. Cheers, Jo",
            a: "Hey! Done. Cheers, Jo",
            b: "Dear Sir or Madam, I write to inform you.",
        }
    }

    #[test]
    fn answers_parse_leniently_but_not_loosely() {
        use Verdict::{A, B};
        let cases: [(&str, Option<Verdict>); 14] = [
            (r#"{"answer": "A"}"#, Some(A)),
            (r#"{"answer":"B"}"#, Some(B)),
            ("```json\n{\"answer\": \"B\"}\n```", Some(B)),
            (
                "Sure! Here is my answer: {\"answer\": \"A\"} because of the tone.",
                Some(A),
            ),
            (r#"{"answer": " a "}"#, Some(A)),
            (r#"{"reason": "short {sentences}", "answer": "b"}"#, Some(B)),
            (r#"{"answer": "A"} {"answer": "A"}"#, Some(A)),
            (r#"{"answer": "A"} or {"answer": "B"}"#, None),
            (r#"{"answer": "A or B"}"#, None),
            (r#"{"answer": "C"}"#, None),
            (r#"{"answer": 1}"#, None),
            ("A", None),
            ("{'answer': 'A'}", None),
            (r#"{"answer": "A""#, None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_answer(text), want, "{text}");
        }
        assert_eq!(parse_answer(""), None);
    }

    #[test]
    fn request_bodies_and_cache_keys_depend_on_order_and_settings() {
        let j = LlmJudge::with_key(LlmOptions::default(), None).unwrap();
        let c = case();
        let ab = j.request_body(&c, c.a, c.b);
        let ba = j.request_body(&c, c.b, c.a);
        assert_eq!(ab, j.request_body(&c, c.a, c.b));
        assert_ne!(cache_key(&ab), cache_key(&ba));
        let key = cache_key(&ab);
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        // SHA-256 of "abc".
        assert_eq!(
            cache_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let v: Value = serde_json::from_str(&ab).unwrap();
        assert_eq!(v["model"], "base");
        assert_eq!(v["temperature"], 0);
        assert_eq!(v["max_tokens"], 32);
        assert_eq!(v["messages"].as_array().unwrap().len(), 6);
        assert_eq!(v["messages"][2]["content"], r#"{"answer":"A"}"#);
        assert_eq!(v["messages"][4]["content"], r#"{"answer":"B"}"#);
        let user = v["messages"][5]["content"].as_str().unwrap();
        let (pa, pb) = (user.find(c.a).unwrap(), user.find(c.b).unwrap());
        assert!(user.find(c.reference).unwrap() < pa && pa < pb);
        let other = LlmJudge::with_key(
            LlmOptions {
                max_tokens: 8,
                ..LlmOptions::default()
            },
            None,
        )
        .unwrap();
        assert_ne!(cache_key(&other.request_body(&c, c.a, c.b)), key);
    }

    /// A fake endpoint answering the given (status, body) replies in turn; returns its
    /// base URL and a handle yielding the Authorization headers it saw.
    fn fake_endpoint(
        replies: Vec<(u16, String)>,
    ) -> (String, std::thread::JoinHandle<Vec<Option<String>>>) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let addr = server.server_addr().to_ip().unwrap();
        let handle = std::thread::spawn(move || {
            let mut auth = Vec::new();
            for (status, body) in replies {
                let req = server.recv().unwrap();
                auth.push(
                    req.headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.to_string()),
                );
                let resp = tiny_http::Response::from_string(body).with_status_code(status);
                req.respond(resp).unwrap();
            }
            auth
        });
        (format!("http://{addr}/v1/"), handle)
    }

    fn completion(content: &str) -> String {
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
            .to_string()
    }

    #[test]
    fn both_orders_retries_cache_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let replies = vec![
            (503, "busy".to_string()),
            (200, completion("```json\n{\"answer\": \"A\"}\n```")),
            (429, "slow down".to_string()),
            (200, completion("I think B.")),
        ];
        let (endpoint, server) = fake_endpoint(replies);
        let opts = LlmOptions {
            endpoint,
            cache_dir: Some(dir.path().to_path_buf()),
            base_delay: Duration::from_millis(1),
            ..LlmOptions::default()
        };
        let judge = LlmJudge::with_key(opts.clone(), Some("sk-test".into())).unwrap();
        let j = judge.judge(&case()).unwrap();
        // (A, B) → A; (B, A) is unparseable → tie; combined: tie.
        assert_eq!(j.verdict, Verdict::Tie);
        assert_eq!(j.detail["ab"]["answer"], "A");
        assert_eq!(j.detail["ba"]["answer"], Value::Null);
        assert_eq!(j.detail["ba"]["raw"], "I think B.");
        let want = LlmStats {
            requests: 4,
            cache_hits: 0,
            malformed: 1,
            retries: 2,
        };
        assert_eq!(judge.stats(), want);
        let auth = server.join().unwrap();
        assert_eq!(auth, vec![Some("Bearer sk-test".to_string()); 4]);
        // The endpoint is gone; a rerun is served from the cache.
        let again = LlmJudge::with_key(opts, None).unwrap();
        assert_eq!(again.judge(&case()).unwrap(), j.with_cached());
        assert_eq!(
            again.stats(),
            LlmStats {
                requests: 0,
                cache_hits: 2,
                malformed: 1,
                retries: 0
            }
        );
    }

    #[test]
    fn client_errors_fail_without_retry_and_no_key_sends_no_header() {
        let (endpoint, server) = fake_endpoint(vec![(401, "bad key".to_string())]);
        let judge = LlmJudge::with_key(
            LlmOptions {
                endpoint,
                ..LlmOptions::default()
            },
            None,
        )
        .unwrap();
        let err = judge.judge(&case()).unwrap_err().to_string();
        assert!(err.contains("answered 401: bad key"), "{err}");
        assert_eq!(judge.stats().requests, 1);
        assert_eq!(server.join().unwrap(), vec![None]);
    }

    impl Judgment {
        /// The judgment as a rerun reading every answer from the cache reports it.
        fn with_cached(&self) -> Judgment {
            let mut j = self.clone();
            for order in ["ab", "ba"] {
                j.detail[order]["cached"] = json!(true);
            }
            j
        }
    }
}
