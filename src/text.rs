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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_both_ends() {
        let clipped = clip_middle(&"é".repeat(1000), 100);
        assert!(clipped.starts_with('é') && clipped.ends_with('é'));
        assert!(clipped.contains("bytes cut"));
        assert_eq!(clip_middle("short", 100), "short");
    }
}
