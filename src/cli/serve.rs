//! `ditto serve`: a minimal OpenAI-compatible HTTP server (`GET /v1/models`, non-streaming
//! `POST /v1/chat/completions`) over the base model and any number of merged adapters,
//! one request at a time.

use super::generate::sample_text;
use super::{Globals, ModelArgs};
use crate::model::Model;
use crate::model::lora::Adapter;
use crate::model::weights::Weights;
use crate::sample::{self, FinishReason, GenerateOptions, SamplingParams};
use crate::tokenize::Message;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The model id of the weights without an adapter.
const BASE: &str = "base";
/// Most samples one request may ask for.
const MAX_N: usize = 64;
/// Largest request body read.
const MAX_BODY: u64 = 16 << 20;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Serve a PEFT adapter directory as model NAME, merged into its own copy of the
    /// weights (repeatable).
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_adapter)]
    adapters: Vec<(String, PathBuf)>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the printed URL tells which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Reply length limit for requests without `max_tokens` (capped by the context).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected NAME=DIR, got {s:?}")),
    }
}

/// An error reply: HTTP status and OpenAI's error object.
#[derive(Debug)]
struct ApiError {
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
        }
    }

    fn not_found(code: Option<&'static str>, message: String) -> ApiError {
        ApiError {
            status: 404,
            kind: "invalid_request_error",
            code,
            message,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.code,
        }})
    }
}

/// `stop`: one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of a chat completion request this server reads; others are ignored.
#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    n: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    #[serde(alias = "max_completion_tokens")]
    max_tokens: Option<usize>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
}

/// The loaded model and the merged weights of every adapter.
struct Server {
    model: Model,
    /// Adapter name and merged weights; swapped into `model` for its requests.
    adapters: Vec<(String, Weights)>,
    default_max_tokens: usize,
    completions: u64,
}

impl Server {
    fn model_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(BASE).chain(self.adapters.iter().map(|(n, _)| n.as_str()))
    }

    /// Run `f` on the model with the weights named `name`.
    fn with_model<R>(&mut self, name: &str, f: impl FnOnce(&Model) -> R) -> Option<R> {
        if name == BASE {
            return Some(f(&self.model));
        }
        let i = self.adapters.iter().position(|(n, _)| n == name)?;
        std::mem::swap(&mut self.model.weights, &mut self.adapters[i].1);
        let r = f(&self.model);
        std::mem::swap(&mut self.model.weights, &mut self.adapters[i].1);
        Some(r)
    }

    fn route(
        &mut self,
        method: &tiny_http::Method,
        path: &str,
        body: &str,
    ) -> Result<Value, ApiError> {
        use tiny_http::Method::{Get, Post};
        match (method, path) {
            (Get, "/v1/models") => Ok(self.list_models()),
            (Post, "/v1/chat/completions") => self.chat(body),
            _ => Err(ApiError::not_found(
                None,
                format!("no route for {method} {path}"),
            )),
        }
    }

    fn list_models(&self) -> Value {
        let created = unix_time();
        let data: Vec<Value> = self
            .model_ids()
            .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "ditto"}))
            .collect();
        json!({"object": "list", "data": data})
    }

    fn chat(&mut self, body: &str) -> Result<Value, ApiError> {
        let req: ChatRequest = serde_json::from_str(body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
        if req.stream == Some(true) {
            return Err(ApiError::bad_request("streaming is not supported"));
        }
        let default_max = self.default_max_tokens;
        self.with_model(&req.model, |model| complete(model, &req, default_max))
            .ok_or_else(|| {
                let message = format!("the model {:?} does not exist", req.model);
                ApiError::not_found(Some("model_not_found"), message)
            })?
            .map(|mut reply| {
                self.completions += 1;
                reply["id"] = json!(format!(
                    "chatcmpl-{}-{}",
                    std::process::id(),
                    self.completions
                ));
                reply["model"] = json!(req.model);
                reply
            })
    }
}

/// Validate a request and generate its choices (without `id` and `model`).
fn complete(
    model: &Model,
    req: &ChatRequest,
    default_max_tokens: usize,
) -> Result<Value, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    if let Some(m) = req
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(ApiError::bad_request(format!(
            "unsupported message role {:?}",
            m.role
        )));
    }
    let n = req.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::bad_request(format!(
            "n must be between 1 and {MAX_N}, got {n}"
        )));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(format!(
            "temperature must be in [0, 2], got {temperature}"
        )));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(format!(
            "top_p must be in (0, 1], got {top_p}"
        )));
    }
    let stops: Vec<&str> = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.as_str()],
        Some(Stop::Many(v)) => v.iter().map(String::as_str).collect(),
    };
    if stops.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad_request("stop strings must not be empty"));
    }
    let prompt = model
        .chat_prompt(&req.messages)
        .map_err(|e| ApiError::bad_request(format!("cannot render the chat prompt: {e:#}")))?;
    let ctx = model.context_len();
    if prompt.len() >= ctx {
        return Err(ApiError::bad_request(format!(
            "the prompt has {} tokens; the model's context is {ctx}",
            prompt.len()
        )));
    }
    let max_new_tokens = match req.max_tokens {
        Some(0) => return Err(ApiError::bad_request("max_tokens must be at least 1")),
        Some(m) if prompt.len() + m > ctx => {
            return Err(ApiError::bad_request(format!(
                "the prompt has {} tokens; with max_tokens {m} it exceeds the model's context of {ctx}",
                prompt.len()
            )));
        }
        Some(m) => m,
        None => default_max_tokens.min(ctx - prompt.len()),
    };
    let params = SamplingParams {
        temperature,
        top_k: 0,
        top_p,
        max_new_tokens,
        min_new_tokens: 0,
        seed: req.seed.unwrap_or_else(random_seed),
    };
    let opts = GenerateOptions {
        n,
        ..GenerateOptions::default()
    };
    let internal = |e: anyhow::Error| ApiError {
        status: 500,
        kind: "server_error",
        code: None,
        message: format!("{e:#}"),
    };
    let samples =
        sample::generate(model, std::slice::from_ref(&prompt), &params, opts).map_err(internal)?;
    let mut choices = Vec::with_capacity(samples.len());
    let mut completion_tokens = 0;
    for s in &samples {
        completion_tokens += s.ids.len();
        let mut text = sample_text(model, s).map_err(internal)?;
        let mut finish = s.finish;
        if let Some(cut) = stops.iter().filter_map(|p| text.find(p)).min() {
            text.truncate(cut);
            finish = FinishReason::Stop;
        }
        choices.push(json!({
            "index": s.sample_index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": null,
        }));
    }
    Ok(json!({
        "object": "chat.completion",
        "created": unix_time(),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt.len(),
            "completion_tokens": completion_tokens,
            "total_tokens": prompt.len() + completion_tokens,
        },
    }))
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A seed for requests that give none.
fn random_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Read a request's body as UTF-8 text, refusing oversized bodies.
fn read_body(req: &mut tiny_http::Request) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if bytes.len() as u64 > MAX_BODY {
        return Err(ApiError::bad_request(format!(
            "the request body exceeds {MAX_BODY} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))
}

pub fn run(g: &Globals, a: ServeArgs) -> Result<()> {
    let model = g.load_model(&a.model)?;
    let mut adapters: Vec<(String, Weights)> = Vec::with_capacity(a.adapters.len());
    for (name, dir) in &a.adapters {
        if name == BASE || adapters.iter().any(|(n, _)| n == name) {
            bail!("adapter name {name:?} is used twice (\"{BASE}\" is the model without adapter)");
        }
        let adapter = Adapter::load(dir, &model.config)?;
        adapters.push((name.clone(), adapter.merged(&model.weights)));
    }
    let mut server = Server {
        model,
        adapters,
        default_max_tokens: a.max_tokens,
        completions: 0,
    };
    let http = tiny_http::Server::http((a.host.as_str(), a.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", a.host, a.port))?;
    let addr = http
        .server_addr()
        .to_ip()
        .context("the server is not listening on an IP address")?;
    eprintln!(
        "serving models: {}",
        server.model_ids().collect::<Vec<_>>().join(", ")
    );
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    for mut req in http.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or_default().to_owned();
        let method = req.method().clone();
        let result = read_body(&mut req).and_then(|body| server.route(&method, &path, &body));
        let (status, body) = match result {
            Ok(v) => (200, v),
            Err(e) => (e.status, e.body()),
        };
        let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
            .expect("a valid header");
        let response = tiny_http::Response::from_string(body.to_string())
            .with_status_code(status)
            .with_header(header);
        if let Err(e) = req.respond(response) {
            eprintln!("{method} {path}: cannot send the response: {e}");
        }
    }
    Ok(())
}
