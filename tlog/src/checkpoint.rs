//! C2SP checkpoints (<https://c2sp.org/tlog-checkpoint>): the signed statement of a log's size
//! and root, as the text of a [signed note](crate::note).
//!
//! ```text
//! <origin>                      the log's unique name, e.g. coffer.<deployment-id>/audit
//! <tree size>                   ASCII decimal, no leading zeros
//! <root hash>                   standard base64 of the 32-byte RFC 6962 root
//! [<extension line>]...         optional, each non-empty
//! ```
//!
//! **Checks, when parsing** ([`Checkpoint::parse`], for any bytes, without panicking): at most
//! [`MAX_NOTE_LEN`] bytes of UTF-8 with no control character but
//! newline, ending in a newline; at least three lines; a non-empty origin; a size of 1 to 20
//! digits without leading zeros that fits in 64 bits; a root that is canonical base64 of exactly
//! 32 bytes; no empty extension line (an empty line would end the note text).

use base64ct::{Base64, Encoding as _};

use crate::merkle::{Hash, HASH_LEN};
use crate::note::{checked_text, excerpt, Note, NoteError, TextError, VerifiedNote, MAX_NOTE_LEN};

/// Why bytes are not a checkpoint, or a checkpoint cannot be made from the values given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedCheckpoint {
    /// Longer than a note may be.
    #[error("checkpoint is {got} bytes, more than the {max} allowed")]
    TooLong {
        /// The limit.
        max: usize,
        /// The length given.
        got: usize,
    },
    /// Not acceptable note text.
    #[error("checkpoint {0}")]
    Text(#[from] TextError),
    /// Fewer than three lines.
    #[error("a checkpoint has at least 3 lines (origin, tree size, root hash), got {got}")]
    TooFewLines {
        /// Lines found.
        got: usize,
    },
    /// An empty origin line.
    #[error("the checkpoint's origin (line 1) is empty")]
    EmptyOrigin,
    /// A line that would break the note (a newline or a control character inside it).
    #[error("checkpoint line {line} {reason}")]
    BadLine {
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The tree size line is not a canonical decimal `u64`.
    #[error("the checkpoint's tree size (line 2) {got:?} {reason}")]
    BadSize {
        /// The line (shortened).
        got: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The root hash line is not base64 of 32 bytes.
    #[error("the checkpoint's root hash (line 3) {got:?} {reason}")]
    BadRootHash {
        /// The line (shortened).
        got: String,
        /// What is wrong.
        reason: String,
    },
    /// An empty extension line.
    #[error("checkpoint extension line {line} is empty")]
    EmptyExtensionLine {
        /// 1-based line number.
        line: usize,
    },
}

/// A log's checkpoint: origin, size, root, and optional extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

/// Checks one line of text: no newline, no control character.
fn check_line(line: &str, number: usize) -> Result<(), MalformedCheckpoint> {
    if line.contains('\n') {
        return Err(MalformedCheckpoint::BadLine {
            line: number,
            reason: "contains a newline",
        });
    }
    if line.bytes().any(|b| b < 0x20) {
        return Err(MalformedCheckpoint::BadLine {
            line: number,
            reason: "contains a control character",
        });
    }
    Ok(())
}

fn parse_size(line: &str) -> Result<u64, MalformedCheckpoint> {
    let bad = |reason| MalformedCheckpoint::BadSize {
        got: excerpt(line),
        reason,
    };
    if line.is_empty() {
        return Err(bad("is empty"));
    }
    if !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("is not a decimal number"));
    }
    if line.len() > 1 && line.starts_with('0') {
        return Err(bad("has a leading zero"));
    }
    line.parse::<u64>()
        .map_err(|_| bad("does not fit in 64 bits"))
}

fn parse_root(line: &str) -> Result<Hash, MalformedCheckpoint> {
    let bad = |reason: String| MalformedCheckpoint::BadRootHash {
        got: excerpt(line),
        reason,
    };
    // Canonical base64 of 32 bytes is 44 characters; refuse longer input before decoding it.
    if line.len() != 44 {
        return Err(bad(format!(
            "is {} characters, not the 44 of a base64 SHA-256 hash",
            line.len()
        )));
    }
    let bytes = Base64::decode_vec(line).map_err(|_| bad("is not canonical base64".into()))?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("is {} bytes, not {HASH_LEN}", bytes.len())))
}

impl Checkpoint {
    /// A checkpoint of `size` leaves with root `root` for the log named `origin` (not empty, one
    /// line).
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: Hash,
    ) -> Result<Self, MalformedCheckpoint> {
        let origin = origin.into();
        if origin.is_empty() {
            return Err(MalformedCheckpoint::EmptyOrigin);
        }
        check_line(&origin, 1)?;
        Ok(Self {
            origin,
            size,
            root,
            extensions: Vec::new(),
        })
    }

    /// The same checkpoint with extension lines (each one line, not empty).
    pub fn with_extensions(mut self, lines: Vec<String>) -> Result<Self, MalformedCheckpoint> {
        for (i, line) in lines.iter().enumerate() {
            if line.is_empty() {
                return Err(MalformedCheckpoint::EmptyExtensionLine { line: i + 4 });
            }
            check_line(line, i + 4)?;
        }
        self.extensions = lines;
        Ok(self)
    }

    /// Parses a checkpoint from a note's text (see the module doc for the rules).
    pub fn parse(text: &[u8]) -> Result<Self, MalformedCheckpoint> {
        if text.len() > MAX_NOTE_LEN {
            return Err(MalformedCheckpoint::TooLong {
                max: MAX_NOTE_LEN,
                got: text.len(),
            });
        }
        let text = checked_text(text)?;
        let body = text.strip_suffix('\n').ok_or(if text.is_empty() {
            TextError::Empty
        } else {
            TextError::NoFinalNewline
        })?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(MalformedCheckpoint::TooFewLines { got: lines.len() });
        };
        if origin.is_empty() {
            return Err(MalformedCheckpoint::EmptyOrigin);
        }
        let size = parse_size(size)?;
        let root = parse_root(root)?;
        if let Some(i) = extensions.iter().position(|l| l.is_empty()) {
            return Err(MalformedCheckpoint::EmptyExtensionLine { line: i + 4 });
        }
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
            extensions: extensions.iter().map(|l| (*l).to_owned()).collect(),
        })
    }

    /// The checkpoint in a note whose signatures verified.
    pub fn from_note(note: &VerifiedNote) -> Result<Self, MalformedCheckpoint> {
        Self::parse(note.text().as_bytes())
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The note text: the lines, each ending in a newline.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            Base64::encode_string(&self.root)
        );
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// An unsigned note of this checkpoint, to sign.
    pub fn to_note(&self) -> Result<Note, NoteError> {
        Note::new(self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_B64: &str = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=";

    #[test]
    fn a_checkpoint_round_trips_through_its_text() {
        let text = format!("coffer.dep-1/audit\n8\n{ROOT_B64}\nextension a\n");
        let c = Checkpoint::parse(text.as_bytes()).unwrap();
        assert_eq!(c.origin(), "coffer.dep-1/audit");
        assert_eq!(c.size(), 8);
        assert_eq!(
            hex::encode(c.root()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assert_eq!(c.extensions(), ["extension a"]);
        assert_eq!(c.to_text(), text);
        let made = Checkpoint::new("coffer.dep-1/audit", 8, *c.root())
            .unwrap()
            .with_extensions(vec!["extension a".into()])
            .unwrap();
        assert_eq!(made, c);
    }

    #[test]
    fn malformed_checkpoints_are_refused_with_the_rule_they_break() {
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "checkpoint is empty"),
            ("o\n1\n".into(), "at least 3 lines"),
            (format!("o\n1\n{ROOT_B64}"), "does not end with a newline"),
            (format!("\n1\n{ROOT_B64}\n"), "origin (line 1) is empty"),
            (format!("o\n01\n{ROOT_B64}\n"), "leading zero"),
            (format!("o\n+1\n{ROOT_B64}\n"), "not a decimal number"),
            (format!("o\n-1\n{ROOT_B64}\n"), "not a decimal number"),
            (format!("o\n\n{ROOT_B64}\n"), "(line 2) \"\" is empty"),
            (
                format!("o\n18446744073709551616\n{ROOT_B64}\n"),
                "does not fit in 64 bits",
            ),
            ("o\n1\nAAAA\n".into(), "not the 44 of a base64"),
            (
                format!("o\n1\n{}\n", ROOT_B64.replace('=', "*")),
                "not canonical base64",
            ),
            // The last character carries two padding bits, which must be zero.
            (
                format!("o\n1\n{}\n", ROOT_B64.replace("Qyg=", "Qyh=")),
                "not canonical base64",
            ),
            (
                format!("o\n1\n{}\n", ROOT_B64.replace('=', "A")),
                "is 33 bytes, not 32",
            ),
            (
                format!("o\n1\n{ROOT_B64}\n\nx\n"),
                "extension line 4 is empty",
            ),
            (
                format!("o\r\n1\n{ROOT_B64}\n"),
                "control character 0x0d at offset 1",
            ),
            ("o\n1\n\u{fffd}\n".into(), "not the 44"),
        ];
        for (text, want) in cases {
            let err = Checkpoint::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
        let err = Checkpoint::parse(b"o\n1\n\xff\n").unwrap_err();
        assert_eq!(
            err,
            MalformedCheckpoint::Text(TextError::NotUtf8 { offset: 4 })
        );
        let huge = vec![b'a'; MAX_NOTE_LEN + 1];
        assert!(matches!(
            Checkpoint::parse(&huge).unwrap_err(),
            MalformedCheckpoint::TooLong { .. }
        ));
        assert_eq!(
            Checkpoint::new("a\nb", 1, [0; 32]).unwrap_err(),
            MalformedCheckpoint::BadLine {
                line: 1,
                reason: "contains a newline"
            }
        );
        assert_eq!(
            Checkpoint::new("a", 1, [0; 32])
                .unwrap()
                .with_extensions(vec![String::new()])
                .unwrap_err(),
            MalformedCheckpoint::EmptyExtensionLine { line: 4 }
        );
    }

    #[test]
    fn the_largest_size_parses() {
        let text = format!("o\n{}\n{ROOT_B64}\n", u64::MAX);
        assert_eq!(Checkpoint::parse(text.as_bytes()).unwrap().size(), u64::MAX);
        assert_eq!(
            Checkpoint::parse(format!("o\n0\n{ROOT_B64}\n").as_bytes())
                .unwrap()
                .size(),
            0
        );
    }
}
