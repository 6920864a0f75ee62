//! Tokenizer built from GGUF metadata or from a `tokenizer.json` file.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper,
    PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

/// `tokenizer.ggml.token_type` of control tokens (`<|im_start|>`, `</s>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer split used by Llama 3 (`tokenizer.ggml.pre` = `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Pre-tokenizer split used by Qwen 2 (`tokenizer.ggml.pre` = `qwen2`): like
/// Llama 3 but every digit stands alone.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Vocabulary as stored in GGUF metadata (`tokenizer.ggml.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`, e.g. `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`, e.g. `"smollm"`, `"llama-bpe"`, `"qwen2"`, `"default"`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte. Empty means "all normal".
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

/// A special token known both by id and by its text.
#[derive(Clone, Debug)]
struct SpecialToken {
    id: u32,
    text: String,
}

/// Text ⇄ token ids for one model, with its BOS/EOS tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    add_bos: bool,
}

/// Turns `tokenizers`' boxed errors into `anyhow` errors.
fn boxed(err: tokenizers::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(err)
}

/// Text of token `id` of a GGUF vocabulary; `what` names the role for errors.
fn gguf_token<'v>(v: &'v GgufVocab, id: u32, what: &str) -> Result<&'v str> {
    usize::try_from(id)
        .ok()
        .and_then(|i| v.tokens.get(i))
        .map(String::as_str)
        .with_context(|| {
            format!(
                "{what} token id {id} is outside the vocabulary ({} tokens)",
                v.tokens.len()
            )
        })
}

/// The pre-tokenizer for a byte-level BPE vocabulary, chosen from
/// `tokenizer.ggml.pre`, and whether the BPE model should look whole words up
/// in the vocabulary before merging (`ignore_merges`, as Llama 3 does).
fn byte_level_pre_tokenizer(pre: Option<&str>) -> Result<(PreTokenizerWrapper, bool)> {
    let regex_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(boxed)
        .context("compiling the pre-tokenizer regex")?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    Ok(match pre {
        // Every digit is its own pre-token, then GPT-2 style splitting.
        Some("smollm" | "starcoder") => (
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            false,
        ),
        Some("llama-bpe" | "llama3") => (regex_then_bytes(LLAMA3_PATTERN)?, true),
        Some("qwen2") => (regex_then_bytes(QWEN2_PATTERN)?, false),
        // "default", "gpt-2" and anything unknown: GPT-2's own regex.
        _ => (ByteLevel::new(false, true, true).into(), false),
    })
}

impl Tokenizer {
    /// Builds a tokenizer from the vocabulary stored in GGUF metadata.
    ///
    /// Only byte-level BPE (`tokenizer.ggml.model` = `"gpt2"`) is supported.
    /// No prefix space is added. Control (type 3) and user-defined (type 4)
    /// tokens are matched verbatim in the input text, so `"<|im_start|>"`
    /// encodes to its id.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer> {
        match v.model.as_str() {
            "gpt2" => {}
            "llama" => bail!(
                "SentencePiece vocabularies (tokenizer.ggml.model = \"llama\") are not supported yet; \
                 use a tokenizer.json instead"
            ),
            other => bail!(
                "tokenizer.ggml.model = {other:?} is not supported (only byte-level BPE, \"gpt2\")"
            ),
        }
        ensure!(!v.tokens.is_empty(), "the GGUF vocabulary has no tokens");
        ensure!(
            u32::try_from(v.tokens.len()).is_ok(),
            "the GGUF vocabulary has too many tokens ({})",
            v.tokens.len()
        );
        ensure!(
            v.token_types.is_empty() || v.token_types.len() == v.tokens.len(),
            "the GGUF vocabulary has {} tokens but {} token types",
            v.tokens.len(),
            v.token_types.len()
        );

        // A duplicated token string keeps its first id.
        let mut vocab = Vocab::default();
        for (id, token) in (0u32..).zip(&v.tokens) {
            vocab.entry(token.clone()).or_insert(id);
        }
        let merges = v
            .merges
            .iter()
            .enumerate()
            .map(|(i, merge)| {
                merge
                    .split_once(' ')
                    .map(|(left, right)| (left.to_owned(), right.to_owned()))
                    .with_context(|| {
                        format!("merge #{i} {merge:?} is not of the form \"left right\"")
                    })
            })
            .collect::<Result<Merges>>()?;

        let (pre_tokenizer, ignore_merges) = byte_level_pre_tokenizer(v.pre.as_deref())?;
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges);
        if let Some(unk) = v.unk_id {
            builder = builder.unk_token(gguf_token(v, unk, "unknown")?.to_owned());
        }
        let bpe = builder
            .build()
            .map_err(boxed)
            .context("building the BPE model from the GGUF vocabulary")?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));

        let mut control = Vec::new();
        let mut user_defined = Vec::new();
        for (token, &kind) in v.tokens.iter().zip(&v.token_types) {
            // An empty added token would match everywhere.
            if token.is_empty() {
                continue;
            }
            match kind {
                TOKEN_TYPE_CONTROL => control.push(AddedToken::from(token.clone(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    user_defined.push(AddedToken::from(token.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        inner
            .add_special_tokens(control)
            .map_err(boxed)
            .context("registering control tokens")?;
        inner
            .add_tokens(user_defined)
            .map_err(boxed)
            .context("registering user-defined tokens")?;

        let special = |id: Option<u32>, what: &str| -> Result<Option<SpecialToken>> {
            id.map(|id| {
                Ok(SpecialToken {
                    id,
                    text: gguf_token(v, id, what)?.to_owned(),
                })
            })
            .transpose()
        };
        Ok(Tokenizer {
            bos: special(v.bos_id, "BOS")?,
            eos: special(v.eos_id, "EOS")?,
            inner,
            add_bos: v.add_bos,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. BOS/EOS are unknown until
    /// [`set_special`](Self::set_special) is called.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(boxed)
            .with_context(|| format!("loading tokenizer from {}", path.display()))?;
        Ok(Tokenizer {
            inner,
            bos: None,
            eos: None,
            add_bos: false,
        })
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(boxed)
            .with_context(|| format!("saving tokenizer to {}", path.display()))
    }

    /// Sets the BOS/EOS tokens by their text and whether a BOS is prepended
    /// to prompts. Fails, changing nothing, if a token is not in the vocabulary.
    pub fn set_special(
        &mut self,
        bos: Option<String>,
        eos: Option<String>,
        add_bos: bool,
    ) -> Result<()> {
        let resolve = |text: Option<String>, what: &str| -> Result<Option<SpecialToken>> {
            text.map(|text| {
                let id = self
                    .token_to_id(&text)
                    .with_context(|| format!("{what} token {text:?} is not in the vocabulary"))?;
                Ok(SpecialToken { id, text })
            })
            .transpose()
        };
        let bos = resolve(bos, "BOS")?;
        let eos = resolve(eos, "EOS")?;
        self.bos = bos;
        self.eos = eos;
        self.add_bos = add_bos;
        Ok(())
    }

    /// Token ids of `text`. Nothing is added (no BOS), but special-token
    /// strings such as `"<|im_start|>"` in the text map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(boxed)
            .context("encoding text")?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included. Fails on an id outside the
    /// vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner
            .decode(ids, false)
            .map_err(boxed)
            .context("decoding token ids")
    }

    /// A decoder that turns a stream of ids into text pieces as soon as they
    /// are complete UTF-8.
    pub fn decode_stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            stream: self.inner.decode_stream(false),
        }
    }

    fn check_id(&self, id: u32) -> Result<()> {
        ensure!(
            self.inner.id_to_token(id).is_some(),
            "token id {id} is not in the vocabulary ({} tokens)",
            self.vocab_size()
        );
        Ok(())
    }

    /// Id of the token whose text is exactly `s`.
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// Text of token `id` (in the byte-level alphabet for byte-level BPE).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of the beginning-of-sequence token, if known.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    /// Id of the end-of-sequence token, if known.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|t| t.id)
    }

    /// Text of the beginning-of-sequence token, if known.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.text.as_str())
    }

    /// Text of the end-of-sequence token, if known.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.text.as_str())
    }

    /// Whether prompts should start with the BOS token (never true without one).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
}

/// Incremental detokenizer from [`Tokenizer::decode_stream`].
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    stream: DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl StreamDecoder<'_> {
    /// Adds one generated id; returns the text it completes, or `None` while
    /// the bytes so far end inside a UTF-8 character.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tokenizer.check_id(id)?;
        self.stream
            .step(id)
            .map_err(boxed)
            .with_context(|| format!("decoding streamed token {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::{ChatTemplate, Message};

    const TOKENIZER_CASES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/tokenizer.json"
    ));
    const CHAT_CASES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/chat_template.json"
    ));
    const CHAT_TEMPLATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/chat_template.jinja"
    ));

    #[derive(serde::Deserialize)]
    struct TokenizerCase {
        text: String,
        ids: Vec<u32>,
        decoded: String,
    }

    #[derive(serde::Deserialize)]
    struct ChatCase {
        messages: Vec<Message>,
        add_generation_prompt: bool,
        text: String,
        ids: Vec<u32>,
    }

    fn tokenizer_cases() -> Vec<TokenizerCase> {
        serde_json::from_str(TOKENIZER_CASES).expect("tokenizer fixture parses")
    }

    /// SmolLM2-135M-Instruct's tokenizer, rebuilt from the default model's GGUF metadata.
    fn smollm2() -> Tokenizer {
        let g = crate::model::gguf::GgufFile::open(&crate::testutil::smollm2_path())
            .expect("default model opens");
        let v = crate::model::loader::gguf_vocab(&g).expect("GGUF has a vocabulary");
        Tokenizer::from_gguf_vocab(&v).expect("SmolLM2 vocabulary loads")
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ditto-tokenize-{}-{name}", std::process::id()))
    }

    /// Saves `tok` as tokenizer.json, reloads it and checks it encodes and
    /// decodes `texts` exactly like the original.
    fn assert_round_trip(tok: &Tokenizer, name: &str, texts: &[&str]) {
        let path = temp_path(name);
        tok.save(&path).unwrap();
        let mut reloaded = Tokenizer::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        reloaded
            .set_special(
                tok.bos_token().map(str::to_owned),
                tok.eos_token().map(str::to_owned),
                tok.add_bos(),
            )
            .unwrap();
        assert_eq!(reloaded.bos_id(), tok.bos_id());
        assert_eq!(reloaded.eos_id(), tok.eos_id());
        assert_eq!(reloaded.vocab_size(), tok.vocab_size());
        for text in texts {
            let ids = tok.encode(text).unwrap();
            assert_eq!(reloaded.encode(text).unwrap(), ids, "{text:?}");
            assert_eq!(reloaded.decode(&ids).unwrap(), tok.decode(&ids).unwrap());
        }
    }

    fn stream_all(tok: &Tokenizer, ids: &[u32]) -> Vec<Option<String>> {
        let mut stream = tok.decode_stream();
        ids.iter().map(|&id| stream.push(id).unwrap()).collect()
    }

    // ---- Golden values from HF transformers (need the real vocabulary) ----

    #[test]
    fn smollm2_matches_reference_encode_and_decode() {
        let tok = smollm2();
        for case in tokenizer_cases() {
            assert_eq!(tok.encode(&case.text).unwrap(), case.ids, "{:?}", case.text);
            assert_eq!(
                tok.decode(&case.ids).unwrap(),
                case.decoded,
                "{:?}",
                case.text
            );
        }
    }

    #[test]
    fn smollm2_chat_template_matches_reference_text_and_ids() {
        let tok = smollm2();
        let template = ChatTemplate::new(CHAT_TEMPLATE, tok.bos_token(), tok.eos_token()).unwrap();
        let cases: Vec<ChatCase> = serde_json::from_str(CHAT_CASES).unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let text = template
                .render(&case.messages, case.add_generation_prompt)
                .unwrap();
            assert_eq!(text, case.text);
            assert_eq!(tok.encode(&text).unwrap(), case.ids, "{text:?}");
        }
    }

    #[test]
    fn smollm2_special_tokens() {
        let tok = smollm2();
        assert_eq!(tok.vocab_size(), 49152);
        assert_eq!(
            (tok.bos_id(), tok.bos_token()),
            (Some(1), Some("<|im_start|>"))
        );
        assert_eq!(
            (tok.eos_id(), tok.eos_token()),
            (Some(2), Some("<|im_end|>"))
        );
        assert!(!tok.add_bos());
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
        assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
        assert_eq!(tok.decode(&[1, 2]).unwrap(), "<|im_start|><|im_end|>");
        assert!(tok.decode(&[49152]).is_err());
    }

    #[test]
    fn smollm2_splits_digits_individually() {
        let tok = smollm2();
        assert_eq!(tok.encode("  12").unwrap(), [256, 33, 34]);
    }

    #[test]
    fn smollm2_stream_decoder_reassembles_reference_texts() {
        let tok = smollm2();
        for case in tokenizer_cases() {
            let pieces = stream_all(&tok, &case.ids);
            let text: String = pieces.iter().flatten().map(String::as_str).collect();
            assert_eq!(text, case.decoded);
            assert!(pieces.iter().flatten().all(|p| !p.contains('\u{FFFD}')));
            if case.text.contains('🎉') {
                assert!(
                    pieces.iter().any(Option::is_none),
                    "emoji bytes span tokens"
                );
            }
        }
    }

    #[test]
    fn smollm2_round_trips_through_tokenizer_json() {
        let tok = smollm2();
        let cases = tokenizer_cases();
        let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
        assert_round_trip(&tok, "smollm2.json", &texts);
    }

    // ---- Synthetic vocabularies (always run) ----

    fn ids_of(tok: &Tokenizer, tokens: &[&str]) -> Vec<u32> {
        tokens.iter().map(|t| tok.token_to_id(t).unwrap()).collect()
    }

    #[test]
    fn special_and_user_defined_tokens_are_matched_in_text() {
        let tok =
            Tokenizer::from_gguf_vocab(&crate::testutil::byte_vocab("default", &["h i"])).unwrap();
        let ids = tok.encode("hi<|im_end|><tool> x").unwrap();
        assert_eq!(ids, ids_of(&tok, &["hi", "<|im_end|>", "<tool>", "Ġ", "x"]));
        assert_eq!(tok.decode(&ids).unwrap(), "hi<|im_end|><tool> x");
        assert_eq!(tok.eos_token(), Some("<|im_end|>"));
        assert!(tok.encode("").unwrap().is_empty());
    }

    #[test]
    fn pre_tokenizer_follows_gguf_pre() {
        let merges = ["1 2", "12 3", "Ġ 1"];
        let encode = |pre: &str, text: &str| {
            let tok =
                Tokenizer::from_gguf_vocab(&crate::testutil::byte_vocab(pre, &merges)).unwrap();
            let ids = tok.encode(text).unwrap();
            ids.iter()
                .map(|&id| tok.id_to_token(id).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(encode("smollm", "123"), ["1", "2", "3"]);
        assert_eq!(encode("smollm", " 1"), ["Ġ", "1"]);
        assert_eq!(encode("default", "123"), ["123"]);
        assert_eq!(encode("default", " 1"), ["Ġ1"]);
        assert_eq!(encode("no-such-pre", "123"), ["123"]);
        assert_eq!(encode("llama-bpe", "1234"), ["123", "4"]);
        assert_eq!(encode("llama-bpe", " 1"), ["Ġ", "1"]);
        assert_eq!(encode("qwen2", "123"), ["1", "2", "3"]);
    }

    #[test]
    fn stream_decoder_waits_for_complete_utf8() {
        let tok = Tokenizer::from_gguf_vocab(&crate::testutil::byte_vocab("smollm", &[])).unwrap();
        let ids = tok.encode("a🎉é").unwrap();
        assert_eq!(ids.len(), 1 + 4 + 2);
        let pieces = stream_all(&tok, &ids);
        let expected = [Some("a"), None, None, None, Some("🎉"), None, Some("é")];
        assert_eq!(
            pieces,
            expected.map(|p| p.map(str::to_owned)).to_vec(),
            "one piece per complete character"
        );
        assert!(tok.decode_stream().push(10_000).is_err());
    }

    #[test]
    fn synthetic_round_trips_through_tokenizer_json() {
        let tok = Tokenizer::from_gguf_vocab(&crate::testutil::byte_vocab("llama-bpe", &["h i"]))
            .unwrap();
        assert_round_trip(&tok, "synthetic.json", &["hi<|im_end|> 1234 <tool>", "é🎉"]);
    }

    #[test]
    fn bad_vocabularies_are_errors() {
        let err = |v: GgufVocab| format!("{:#}", Tokenizer::from_gguf_vocab(&v).err().unwrap());
        let good = crate::testutil::byte_vocab("smollm", &["h i"]);
        assert!(
            err(GgufVocab {
                model: "llama".into(),
                ..good.clone()
            })
            .contains("not supported")
        );
        assert!(
            err(GgufVocab {
                model: "bert".into(),
                ..good.clone()
            })
            .contains("not supported")
        );
        assert!(
            err(GgufVocab {
                merges: vec!["hi".into()],
                ..good.clone()
            })
            .contains("merge #0")
        );
        assert!(
            !err(GgufVocab {
                merges: vec!["h zz".into()],
                ..good.clone()
            })
            .is_empty()
        );
        assert!(
            err(GgufVocab {
                bos_id: Some(99_999),
                ..good.clone()
            })
            .contains("BOS")
        );
        assert!(
            err(GgufVocab {
                token_types: vec![1],
                ..good.clone()
            })
            .contains("token types")
        );
        assert!(
            err(GgufVocab {
                tokens: vec![],
                ..good
            })
            .contains("no tokens")
        );
    }

    #[test]
    fn set_special_resolves_or_fails() {
        let mut tok =
            Tokenizer::from_gguf_vocab(&crate::testutil::byte_vocab("smollm", &[])).unwrap();
        tok.set_special(Some("<|im_end|>".into()), None, true)
            .unwrap();
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.add_bos()),
            (Some(1), None, true)
        );
        let err = tok
            .set_special(None, Some("<nope>".into()), false)
            .unwrap_err();
        assert!(format!("{err:#}").contains("<nope>"));
        assert_eq!(
            tok.bos_id(),
            Some(1),
            "a failed set_special changes nothing"
        );
        assert!(tok.decode(&[5, 99_999]).is_err());
    }

    #[test]
    fn missing_tokenizer_file_is_an_error() {
        let err = Tokenizer::from_file(&temp_path("missing.json"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("missing.json"));
    }
}
