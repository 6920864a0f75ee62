//! Chat templates (the Jinja source in `tokenizer.chat_template`) rendered
//! the way Hugging Face transformers renders them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Enumerator, Kwargs, Object, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

const TEMPLATE_NAME: &str = "chat_template";

/// Contents of the probe conversation used to find the end-of-turn marker;
/// unlikely to occur anywhere else in a rendered template.
const PROBE_USER: &str = "ditto-probe-user-x7q";
const PROBE_ASSISTANT: &str = "ditto-probe-assistant-y7q";

/// End-of-turn markers recognised in a template's source when rendering the
/// probe conversation does not reveal one.
const KNOWN_END_MARKERS: [&str; 6] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>",
];

/// One chat message.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    /// `"system"`, `"user"`, `"assistant"`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A message as the template sees it: a mapping with the keys `role` and
/// `content`, in that order (as in the Python dicts transformers passes).
impl Object for Message {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role.as_str())),
            "content" => Some(Value::from(self.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// A compiled chat template.
///
/// Rendering follows transformers: `trim_blocks` and `lstrip_blocks` are on,
/// a single trailing newline of the source is dropped, undefined variables
/// print as nothing, Python string/dict/list methods work (`.strip()`,
/// `.startswith()`, `.items()`, ...), and `raise_exception`, `strftime_now`
/// (UTC) and a Python-style `tojson` are available. The variables are
/// `messages`, `add_generation_prompt`, `bos_token` and `eos_token` (the last
/// two undefined when not given).
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source`; fails with the position of a syntax error.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate> {
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .context("configuring the chat template syntax")?;
        let mut env = Environment::new();
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .context("the chat template does not compile")?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
        })
    }

    /// Renders `messages`, followed by the assistant-turn header when
    /// `add_generation_prompt` is set.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .context("looking up the compiled chat template")?;
        let messages: Value = messages
            .iter()
            .map(|m| Value::from_object(m.clone()))
            .collect();
        let mut ctx = BTreeMap::from([
            ("messages", messages),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ]);
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        template
            .render(Value::from(ctx))
            .context("rendering the chat template")
    }

    /// The text that closes an assistant turn (`"<|im_end|>"` for ChatML,
    /// `"<|eot_id|>"` for Llama 3, `"</s>"` for Mistral), if any.
    ///
    /// Renders the conversation [user, assistant] and takes what follows the
    /// assistant's text up to the end of that line, trimmed. If that yields
    /// nothing (or the probe fails to render), looks for a well-known marker
    /// in the template source.
    pub fn end_of_turn(&self) -> Option<String> {
        self.probe_end_of_turn().or_else(|| {
            KNOWN_END_MARKERS
                .iter()
                .find(|marker| self.source.contains(**marker))
                .map(|marker| (*marker).to_owned())
        })
    }

    fn probe_end_of_turn(&self) -> Option<String> {
        let probe = [
            Message::new("user", PROBE_USER),
            Message::new("assistant", PROBE_ASSISTANT),
        ];
        let text = self.render(&probe, false).ok()?;
        let (_, after) = text.rsplit_once(PROBE_ASSISTANT)?;
        let marker = after.split('\n').next().unwrap_or_default().trim();
        (!marker.is_empty()).then(|| marker.to_owned())
    }
}

/// `raise_exception(message)`: aborts rendering with `message`.
fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time formatted like Python's
/// `datetime.strftime`.
fn strftime_now(format: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(now, format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Formats `unix_secs` (UTC) with the common `strftime` directives
/// (`%Y %y %m %d %e %j %H %I %M %S %p %B %b %h %A %a %F %T %%`); any other
/// directive is copied through unchanged.
fn format_utc(unix_secs: u64, format: &str) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or_default()];
    // 1970-01-01 was a Thursday.
    let weekday_name = WEEKDAYS[usize::try_from((days + 4) % 7).unwrap_or_default()];
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    const DAYS_BEFORE_MONTH: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = DAYS_BEFORE_MONTH[usize::try_from(month - 1).unwrap_or_default()]
        + day
        + u64::from(leap && month > 2);

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('Y') => year.to_string(),
            Some('y') => format!("{:02}", year % 100),
            Some('m') => format!("{month:02}"),
            Some('d') => format!("{day:02}"),
            Some('e') => format!("{day:>2}"),
            Some('j') => format!("{day_of_year:03}"),
            Some('H') => format!("{hour:02}"),
            Some('I') => format!("{hour12:02}"),
            Some('M') => format!("{minute:02}"),
            Some('S') => format!("{second:02}"),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            Some('B') => month_name.to_owned(),
            Some('b' | 'h') => month_name[..3].to_owned(),
            Some('A') => weekday_name.to_owned(),
            Some('a') => weekday_name[..3].to_owned(),
            Some('F') => format!("{year}-{month:02}-{day:02}"),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('%') => "%".to_owned(),
            Some(other) => format!("%{other}"),
            None => "%".to_owned(),
        };
        out.push_str(&piece);
    }
    out
}

/// (year, month 1-12, day 1-31) of the given day count since 1970-01-01
/// (proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days end each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// `tojson(indent=None)`: JSON as Python's `json.dumps(..., ensure_ascii=False)`
/// writes it (`", "` and `": "` separators; newlines and indentation with
/// `indent`).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let json = AsJson(value);
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let indent = vec![b' '; width];
            let formatter = PrettyFormatter::with_indent(&indent);
            json.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, formatter,
            ))
        }
        None => json.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonFormatter,
        )),
    };
    let to_error = |e: &dyn std::fmt::Display| {
        JinjaError::new(ErrorKind::InvalidOperation, format!("tojson failed: {e}"))
    };
    written.map_err(|e| to_error(&e))?;
    String::from_utf8(out).map_err(|e| to_error(&e))
}

/// Python's default `json.dumps` separators on one line.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// A template value serialized in its own iteration order (Python's
/// `json.dumps` keeps dict order too); undefined becomes `null`.
struct AsJson<'a>(&'a Value);

impl Serialize for AsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap, SerializeSeq};
        let value = self.0;
        let jinja = |e: JinjaError| S::Error::custom(e);
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => serializer.serialize_unit(),
            ValueKind::Bool => serializer.serialize_bool(value.is_true()),
            ValueKind::Number => {
                let integer = value
                    .is_integer()
                    .then(|| i64::try_from(value.clone()).ok())
                    .flatten();
                match (integer, f64::try_from(value.clone())) {
                    (Some(i), _) => serializer.serialize_i64(i),
                    (None, Ok(f)) => serializer.serialize_f64(f),
                    (None, Err(_)) => serializer.serialize_unit(),
                }
            }
            ValueKind::String => serializer.serialize_str(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let mut seq = serializer.serialize_seq(value.len())?;
                for item in value.try_iter().map_err(jinja)? {
                    seq.serialize_element(&AsJson(&item))?;
                }
                seq.end()
            }
            ValueKind::Map => {
                let mut map = serializer.serialize_map(value.len())?;
                for key in value.try_iter().map_err(jinja)? {
                    let item = value.get_item(&key).map_err(jinja)?;
                    match key.as_str() {
                        Some(name) => map.serialize_entry(name, &AsJson(&item))?,
                        None => map.serialize_entry(&key.to_string(), &AsJson(&item))?,
                    }
                }
                map.end()
            }
            _ => serializer.serialize_str(&value.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2_TEMPLATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/chat_template.jinja"
    ));
    const SMOLLM2_CASES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/chat_template.json"
    ));

    /// Meta-Llama-3-Instruct's template.
    const LLAMA3_TEMPLATE: &str = r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    /// A Mistral-Instruct style template.
    const MISTRAL_TEMPLATE: &str = r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    #[derive(serde::Deserialize)]
    struct ChatCase {
        messages: Vec<Message>,
        add_generation_prompt: bool,
        text: String,
    }

    fn plain(source: &str) -> ChatTemplate {
        ChatTemplate::new(source, None, None).unwrap()
    }

    fn user(content: &str) -> Message {
        Message::new("user", content)
    }

    #[test]
    fn smollm2_renders_reference_texts() {
        let template =
            ChatTemplate::new(SMOLLM2_TEMPLATE, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
        let cases: Vec<ChatCase> = serde_json::from_str(SMOLLM2_CASES).unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            let text = template
                .render(&case.messages, case.add_generation_prompt)
                .unwrap();
            assert_eq!(text, case.text);
        }
        assert_eq!(template.end_of_turn().as_deref(), Some("<|im_end|>"));
    }

    #[test]
    fn llama3_template() {
        let template = ChatTemplate::new(
            LLAMA3_TEMPLATE,
            Some("<|begin_of_text|>"),
            Some("<|eot_id|>"),
        )
        .unwrap();
        let messages = [Message::new("system", "Be terse."), user("  Hi!\n")];
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(template.end_of_turn().as_deref(), Some("<|eot_id|>"));
    }

    #[test]
    fn mistral_template() {
        let template = ChatTemplate::new(MISTRAL_TEMPLATE, Some("<s>"), Some("</s>")).unwrap();
        let messages = [
            user("Hi"),
            Message::new("assistant", "Hello!"),
            user("How are you?"),
        ];
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "<s>[INST] Hi [/INST]Hello!</s>[INST] How are you? [/INST]"
        );
        assert_eq!(template.end_of_turn().as_deref(), Some("</s>"));
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let template = ChatTemplate::new(MISTRAL_TEMPLATE, Some("<s>"), Some("</s>")).unwrap();
        let err = template
            .render(&[Message::new("assistant", "first")], false)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("Conversation roles must alternate"),
            "{err:#}"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        for source in [
            "{% for m in messages %}{{ m.content }}",
            "{{ messages[0] ",
            "{% if %}x{% endif %}",
        ] {
            let err = ChatTemplate::new(source, None, None).err().unwrap();
            assert!(format!("{err:#}").contains("does not compile"), "{err:#}");
        }
    }

    #[test]
    fn end_of_turn_falls_back_to_known_markers_or_none() {
        assert_eq!(
            plain("{% for m in messages %}{{ m.content }}{% endfor %}").end_of_turn(),
            None
        );
        // A template that cannot render the probe but names a known marker.
        let template = plain("{{ raise_exception('no') }}<|end|>");
        assert_eq!(template.end_of_turn().as_deref(), Some("<|end|>"));
    }

    #[test]
    fn whitespace_control_matches_transformers() {
        let template = plain(
            "{% for m in messages %}\n  {{ m.role }}: {{ m.content }}\n  {% if loop.last %}\n(last)\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nassistant:\n{% endif %}\n",
        );
        assert_eq!(
            template.render(&[user("a"), user("b")], true).unwrap(),
            "  user: a\n  user: b\n(last)\nassistant:\n"
        );
    }

    #[test]
    fn python_methods_work() {
        let template = plain(
            "{% for m in messages %}{% if m.content.startswith('/') %}cmd:{% endif %}{{ m.content.strip().upper() }}|{{ m['role'].replace('u', 'U') }}|{% endfor %}{{ 'a,b'.split(',') | join('+') }}",
        );
        assert_eq!(
            template.render(&[user("  /run ")], false).unwrap(),
            "/RUN|User|a+b"
        );
        // `cmd:` is not printed: the unstripped content starts with spaces.
        assert_eq!(
            template.render(&[user("/x")], false).unwrap(),
            "cmd:/X|User|a+b"
        );
    }

    #[test]
    fn undefined_variables_are_lenient() {
        let template = plain(
            "[{{ bos_token }}{{ eos_token }}{{ nothing }}]{% if tools %}T{% endif %}{% for x in nothing %}x{% endfor %}",
        );
        assert_eq!(template.render(&[], false).unwrap(), "[]");
        assert!(plain("{{ nothing.attr }}").render(&[], false).is_err());
    }

    #[test]
    fn tojson_matches_python() {
        let template = plain(
            "{{ {'a': [1, 2.5, 'é<\"'], 'b': none, 'c': {'d': true}} | tojson }}\n{{ [1, {}, []] | tojson(indent=2) }}",
        );
        assert_eq!(
            template.render(&[], false).unwrap(),
            "{\"a\": [1, 2.5, \"é<\\\"\"], \"b\": null, \"c\": {\"d\": true}}\n[\n  1,\n  {},\n  []\n]"
        );
        let messages = plain("{{ messages | tojson }}")
            .render(&[user("hi")], false)
            .unwrap();
        assert_eq!(messages, r#"[{"role": "user", "content": "hi"}]"#);
    }

    #[test]
    fn strftime_formats_like_python() {
        // 2024-02-29T13:05:09Z
        assert_eq!(
            format_utc(
                1_709_211_909,
                "%Y-%m-%d %H:%M:%S|%d %b %Y|%A %a %B %j %I %p %y %e|%F %T|%%|%Q"
            ),
            "2024-02-29 13:05:09|29 Feb 2024|Thursday Thu February 060 01 PM 24 29|2024-02-29 13:05:09|%|%Q"
        );
        assert_eq!(format_utc(0, "%c %F %a"), "%c 1970-01-01 Thu");
        let year: u64 = plain("{{ strftime_now('%Y') }}")
            .render(&[], false)
            .unwrap()
            .parse()
            .unwrap();
        assert!(year >= 2024);
    }
}
