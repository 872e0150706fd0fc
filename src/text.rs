//! Small text helpers shared by every layer (log lines, error messages).
//! A leaf: it imports nothing of the crate.

/// Shortens text for a log line by cutting out its middle.
pub fn clip_middle(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let half = max / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} …[{} bytes cut]… {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// `bytes` as lowercase hex, two digits a byte (a digest, a MAC).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn clipping_keeps_both_ends() {
        let clipped = clip_middle(&"é".repeat(1000), 100);
        assert!(clipped.starts_with('é') && clipped.ends_with('é'));
        assert!(clipped.contains("bytes cut"));
        assert_eq!(clip_middle("short", 100), "short");
    }
}
