//! Demonstrations as training sequences (DESIGN §1 step 1): the prompt rendered with
//! the chat template and the generation prompt, followed by the demonstration and the
//! template's end-of-turn marker; labels start where the prompt's tokens end.

use crate::data::Demo;
use crate::model::Model;
use crate::tokenize::Message;
use anyhow::{Context, Result};

/// A tokenized (prompt, response) pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Index of the first response token.
    pub label_from: usize,
}

/// The chat (optional system message, then the user's prompt) of a demonstration.
pub fn prompt_messages(system: Option<&str>, prompt: &str) -> Vec<Message> {
    let mut m = Vec::with_capacity(2);
    if let Some(s) = system {
        m.push(Message::new("system", s));
    }
    m.push(Message::new("user", prompt));
    m
}

/// Tokenize `prompt` + `response` + end-of-turn. The prompt and the whole text are
/// tokenized separately; where the tokenizer merges across the boundary, the
/// boundary moves back to the longest common prefix, so the prompt ids are always an
/// exact prefix of the sequence.
pub fn encode_pair(
    model: &Model,
    system: Option<&str>,
    prompt: &str,
    response: &str,
) -> Result<Encoded> {
    let template = model.chat_template()?;
    let prompt_text = template.render(&prompt_messages(system, prompt), true)?;
    let eot = template
        .end_of_turn()
        .or_else(|| model.tokenizer.eos_token().map(str::to_owned))
        .context("the chat template has no end-of-turn marker and the model no eos token")?;
    let prompt_ids = model.encode_with_bos(&prompt_text)?;
    let ids = model.encode_with_bos(&format!("{prompt_text}{response}{eot}"))?;
    let common = prompt_ids
        .iter()
        .zip(&ids)
        .take_while(|(a, b)| a == b)
        .count();
    Ok(Encoded {
        label_from: common.max(1),
        ids,
    })
}

/// Encode a demonstration.
pub fn encode_demo(model: &Model, demo: &Demo) -> Result<Encoded> {
    encode_pair(
        model,
        demo.system.as_deref(),
        &demo.prompt,
        &demo.demonstration,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::smollm2;

    #[test]
    fn demonstration_ends_with_the_end_of_turn_token_and_prompt_is_a_prefix() {
        let m = smollm2();
        let e = encode_pair(m, None, "Say hi.", "Hi there!").unwrap();
        let prompt = m.chat_prompt(&prompt_messages(None, "Say hi.")).unwrap();
        assert_eq!(&e.ids[..e.label_from], prompt.as_slice());
        assert_eq!(e.ids[e.label_from..], [26843, 665, 17, 2]);
        assert_eq!(
            m.tokenizer.decode(&e.ids[e.label_from..]).unwrap(),
            "Hi there!<|im_end|>"
        );
    }

    #[test]
    fn prompt_ids_stay_an_exact_prefix_at_awkward_boundaries() {
        let m = smollm2();
        let prompt = m
            .chat_prompt(&prompt_messages(Some("Be brief."), "Go"))
            .unwrap();
        for response in [
            "\nHi",
            "\n\nHi",
            " leading space",
            "12345",
            "",
            "<|im_end|>",
        ] {
            let e = encode_pair(m, Some("Be brief."), "Go", response).unwrap();
            assert!(e.label_from <= prompt.len(), "{response:?}");
            assert_eq!(
                &e.ids[..e.label_from],
                &prompt[..e.label_from],
                "{response:?}"
            );
            assert_eq!(
                *e.ids.last().unwrap(),
                2,
                "{response:?} ends with <|im_end|>"
            );
            assert_eq!(
                e.ids.iter().filter(|&&t| t == 1).count(),
                3,
                "one <|im_start|> per turn"
            );
        }
    }
}
