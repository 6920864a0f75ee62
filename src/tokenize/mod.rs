//! Text ⇄ token ids and chat-prompt rendering.
//!
//! * [`Tokenizer`] wraps a Hugging Face `tokenizers` tokenizer. It is built
//!   either from the vocabulary stored in GGUF metadata ([`GgufVocab`],
//!   byte-level BPE only for now) or from a `tokenizer.json` file, and adds
//!   the model's BOS/EOS bookkeeping plus a streaming detokenizer
//!   ([`StreamDecoder`]) that never emits half a UTF-8 character.
//! * [`ChatTemplate`] renders a conversation ([`Message`]s) with the model's
//!   Jinja chat template using the same conventions as Hugging Face
//!   transformers (`trim_blocks`, `lstrip_blocks`, `raise_exception`,
//!   `strftime_now`, Python string methods, Python-style `tojson`), and can
//!   tell which marker ends an assistant turn.

mod template;
mod tokenizer;

pub use template::{ChatTemplate, Message};
pub use tokenizer::{GgufVocab, StreamDecoder, Tokenizer};
