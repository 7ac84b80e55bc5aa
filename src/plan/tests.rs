use proptest::prelude::*;

use super::*;

/// Every cut is where a grapheme cluster ends, the parts cover the text
/// exactly and in order, and none is longer than `max` characters.
fn assert_sound(text: &str, parts: &[Part], max: usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.chars.start, at, "part {i} starts where the last ended");
        assert!(
            part.chars.len() <= max,
            "part {i} has {} characters (max {max})",
            part.chars.len()
        );
        let byte_at = chars[..part.chars.start]
            .iter()
            .map(|c| c.len_utf8())
            .sum::<usize>();
        assert!(
            is_grapheme_boundary(text, byte_at),
            "part {i} starts inside a grapheme cluster"
        );
        at = part.chars.end;
        assert_eq!(part.join == Join::End, i + 1 == parts.len());
    }
    assert_eq!(at, chars.len(), "the parts cover the whole text");
}

#[test]
fn a_text_that_fits_is_one_part() {
    let parts = plan("  Hello there.  ", 100, false);
    assert_eq!(
        parts,
        vec![Part {
            chars: 0..16,
            text: "Hello there.".into(),
            join: Join::End
        }]
    );
    assert!(plan("", 100, false).is_empty());
}

#[test]
fn paragraphs_are_preferred_then_sentences() {
    let a = "First paragraph, one sentence. Another one here.";
    let b = "Second paragraph is here. It also has two.";
    let text = format!("{a}\n\n{b}");
    let parts = plan(&text, 60, false);
    assert_sound(&text, &parts, 60);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].text, a);
    assert_eq!(parts[0].join, Join::Paragraph);
    assert_eq!(parts[1].text, b);
    // A paragraph longer than a part is cut between its sentences.
    let parts = plan(a, 35, false);
    assert_sound(a, &parts, 35);
    assert_eq!(parts[0].text, "First paragraph, one sentence.");
    assert_eq!(parts[0].join, Join::Sentence);
}

#[test]
fn abbreviations_do_not_end_sentences() {
    let text = "We met Dr. Smith at noon. Then we left for the station together.";
    let parts = plan(text, 30, false);
    assert_sound(text, &parts, 30);
    assert!(parts.iter().all(|p| !p.text.ends_with("Dr.")), "{parts:?}");
}

#[test]
fn long_sentences_are_cut_at_clauses_then_words() {
    let text = "one two three, four five six, seven eight nine ten eleven twelve thirteen";
    let parts = plan(text, 20, false);
    assert_sound(text, &parts, 20);
    assert_eq!(parts[0].text, "one two three,");
    assert!(
        parts
            .iter()
            .all(|p| p.join != Join::Sentence || p.join == Join::End)
    );
}

#[test]
fn scripts_without_spaces_are_cut_between_characters_never_inside_a_cluster() {
    // Chinese without punctuation, Thai without spaces, emoji ZWJ sequences
    // and combining marks.
    let zh = "我们今天在这里讨论一个非常长的句子它没有任何标点符号所以只能在字之间切分".repeat(3);
    let th = "ภาษาไทยไม่มีช่องว่างระหว่างคำจึงต้องตัดที่ขอบเขตของกลุ่มอักขระ".repeat(3);
    let emoji = "👩‍👩‍👧‍👦e\u{301}".repeat(20);
    for text in [zh.as_str(), th.as_str(), emoji.as_str()] {
        let parts = plan(text, 20, false);
        assert!(parts.len() > 1);
        assert_sound(text, &parts, 20);
    }
}

#[test]
fn dialogue_is_cut_between_turns_and_long_turns_keep_their_label() {
    let long_turn = "This is a long answer. ".repeat(6);
    let text = format!(
        "Speaker 1: Hello, how are you?\nSpeaker 2: {long_turn}\nSpeaker 1: Good to hear.\nSpeaker 2: Bye."
    );
    let parts = plan(&text, 60, true);
    assert_sound(&text, &parts, 60 + "Speaker 2: ".len());
    for part in &parts {
        assert!(
            SPEAKER_LABELS.iter().any(|l| part.text.starts_with(l)),
            "{:?}",
            part.text
        );
    }
    // The long turn's pieces all speak as Speaker 2.
    let long: Vec<&Part> = parts
        .iter()
        .filter(|p| p.text.contains("long answer"))
        .collect();
    assert!(long.len() >= 2, "{parts:?}");
    assert!(long.iter().all(|p| p.text.starts_with("Speaker 2:")));
    // Short turns share parts.
    assert!(
        parts.iter().any(|p| p.text.matches("Speaker").count() >= 2),
        "{parts:#?}"
    );
}

#[test]
fn a_200000_character_text_plans_into_full_parts() {
    let paragraph = "The quick brown fox jumps over the lazy dog, again and again. ".repeat(20);
    let text = format!("{paragraph}\n\n").repeat(170);
    let text = &text[..200_000];
    let parts = plan(text, DEFAULT_PART_CHARS, false);
    assert_sound(text, &parts, DEFAULT_PART_CHARS);
    // Greedy packing: parts are full, not fragments.
    assert!(
        parts.len() <= 200_000 / (DEFAULT_PART_CHARS / 2),
        "{} parts",
        parts.len()
    );
}

fn texts() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("word ".to_owned()),
        Just("Sentence ends here. ".to_owned()),
        Just("a clause, ".to_owned()),
        Just("\n\n".to_owned()),
        Just("\n".to_owned()),
        Just("中文字".to_owned()),
        Just("。".to_owned()),
        Just("ภาษาไทย".to_owned()),
        Just("👩‍👩‍👧‍👦".to_owned()),
        Just("e\u{301}".to_owned()),
        Just("\r\n".to_owned()),
        "[a-z]{1,30}",
    ];
    proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn any_text_is_covered_by_parts_cut_at_cluster_boundaries(text in texts(), max in 16usize..120) {
        let parts = plan(&text, max, false);
        assert_sound(&text, &parts, max);
        prop_assert_eq!(parts.clone(), plan(&text, max, false), "the plan is a pure function");
    }

    #[test]
    fn any_dialogue_keeps_a_label_on_every_cut_turn(turns in proptest::collection::vec((0usize..2, texts()), 1..8), max in 40usize..120) {
        let text: String = turns
            .iter()
            .map(|(s, t)| format!("{} {}\n", SPEAKER_LABELS[*s], t.replace('\n', " ")))
            .collect();
        let parts = plan(&text, max, true);
        assert_sound(&text, &parts, max + "Speaker 1: ".len());
        for part in &parts {
            prop_assert!(SPEAKER_LABELS.iter().any(|l| part.text.starts_with(l)), "{:?}", part.text);
        }
    }
}

#[test]
fn clause_punctuation_carrying_a_combining_mark_is_not_cut_after() {
    // ",\u{301}" is one grapheme cluster: the clause cut must not split it.
    let text = "abcdef,\u{301}ghijk ".repeat(12);
    let parts = plan(&text, 16, false);
    assert!(parts.len() > 1);
    assert_sound(&text, &parts, 16);
}

#[test]
fn parts_are_sized_by_their_speech_in_every_script() {
    let seconds = |p: &Part| crate::spoken::latin_equivalent(&p.text) / 15.0;
    // 12,000 Chinese characters are ≈ 2,670 s of speech at 4.5 a second:
    // parts of ≈ 900 characters (200 s), not 3,000 (667 s, past one
    // call's cap).
    let zh = "我们今天在这里讨论一个很长的故事，它有许多句子。".repeat(500);
    assert_eq!(zh.chars().count(), 12_000);
    let parts = plan(&zh, DEFAULT_PART_CHARS, false);
    assert!(parts.len() >= 14, "{} parts", parts.len());
    for p in &parts {
        assert!(seconds(p) <= 200.0 + 1e-6, "{:.0} s", seconds(p));
        assert!(p.chars.len() <= 900);
    }
    // Japanese (kanji and kana) and Thai likewise; English keeps its
    // 3,000-character parts.
    let ja = "今日はとても長い物語を読みます。ゆっくり聞いてください。".repeat(200);
    let th = "ภาษาไทยไม่มีช่องว่างระหว่างคำ จึงต้องตัดที่ขอบเขตของกลุ่มอักขระ ".repeat(150);
    let en = "The quick brown fox jumps over the lazy dog, again and again. ".repeat(200);
    for (text, at_least) in [(&ja, 5), (&th, 4), (&en, 5)] {
        let parts = plan(text, DEFAULT_PART_CHARS, false);
        assert!(parts.len() >= at_least, "{} parts", parts.len());
        assert!(parts.iter().all(|p| seconds(p) <= 200.0 + 1e-6));
    }
    let en_parts = plan(&en, DEFAULT_PART_CHARS, false);
    assert!(en_parts[0].chars.len() > 2_900);
}

#[test]
fn a_part_splits_into_pieces_that_cover_it_and_say_all_of_it() {
    let sentence = "The committee met again on Tuesday, and the vote was close. ";
    let text = format!("{}\n\n{}", sentence.repeat(60), sentence.repeat(100));
    let parts = plan(&text, 7_000, false);
    assert_eq!(parts.len(), 2);
    let part = &parts[1];
    let pieces = split(&text, part, 3, false);
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    assert_eq!(pieces[0].chars.start, part.chars.start);
    assert_eq!(pieces.last().map(|p| p.chars.end), Some(part.chars.end));
    for pair in pieces.windows(2) {
        assert_eq!(pair[0].chars.end, pair[1].chars.start, "contiguous");
        // Cut between sentences, not inside one.
        assert_eq!(pair[0].join, Join::Sentence);
        assert!(pair[0].text.ends_with('.'), "{:?}", pair[0].text);
    }
    assert_eq!(pieces.last().map(|p| p.join), Some(part.join));
    // Each piece's characters are the text it sends (trimmed), and no
    // piece holds much more than a third of the part (a tenth of slack).
    let chars: Vec<char> = text.chars().collect();
    for piece in &pieces {
        let slice: String = chars[piece.chars.clone()].iter().collect();
        assert_eq!(piece.text, slice.trim());
        assert!(
            piece.chars.len() <= part.chars.len() * 11 / 30 + 1,
            "{}",
            piece.chars.len()
        );
    }
    // The same part always splits the same way.
    assert_eq!(split(&text, part, 3, false), pieces);
}

#[test]
fn a_dialogue_turn_split_into_pieces_keeps_its_speaker() {
    let turn = "I have been thinking about what you said yesterday. ".repeat(40);
    let text = format!("Speaker 1: Hello there.\nSpeaker 2: {turn}\nSpeaker 1: Goodbye.");
    let parts = plan_dialogue(&text, 7_000);
    assert_eq!(parts.len(), 1);
    let pieces = split(&text, &parts[0], 2, true);
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert!(pieces[0].text.starts_with("Speaker 1: Hello there."));
    // A piece starting inside the long turn carries its label again.
    assert!(
        pieces[1..].iter().all(|p| p.text.starts_with("Speaker ")),
        "{pieces:?}"
    );
    assert_eq!(pieces[0].chars.start, 0);
    assert_eq!(
        pieces.last().map(|p| p.chars.end),
        Some(text.chars().count())
    );
}

#[test]
fn the_default_part_size_is_the_configured_default() {
    // `long_text.part_chars` in the shipped defaults.
    let defaults = include_str!("../../config/default.toml");
    let configured = defaults
        .lines()
        .find_map(|l| l.trim().strip_prefix("part_chars = "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    assert_eq!(configured, Some(DEFAULT_PART_CHARS));
}

#[test]
fn a_plans_parts_are_slices_of_the_one_text_never_copies() {
    let sentence = "河水绕过古老的磨坊，田野上的光变成了金色。";
    let text: std::sync::Arc<str> = sentence.repeat(2_000).into();
    let parts = super::plan_of(&text, 3_000, false);
    assert!(parts.len() > 10, "{} parts", parts.len());
    let held = text.as_ptr() as usize..text.as_ptr() as usize + text.len();
    for part in &parts {
        let at = part.text.as_ptr() as usize;
        assert!(
            held.contains(&at) && at + part.text.len() <= held.end,
            "part {:?} is a copy",
            part.chars
        );
    }
    // Only the job and the parts hold the text: one allocation.
    assert_eq!(std::sync::Arc::strong_count(&text), parts.len() + 1);
}
