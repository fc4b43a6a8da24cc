//! A bounds-checked cursor over untrusted bytes. Every read names the field it reads, so a short
//! input is reported as "TPMS_ATTEST.extraData needs 9 bytes at offset 44, 3 left" rather than
//! as a panic or a bare "truncated".

/// The input ended before a field could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("truncated input: {field} needs {needed} bytes at offset {offset}, {available} left")]
pub struct Truncated {
    /// The structure field that could not be read (TPM 2.0 Part 2 / TCG / PE names).
    pub field: &'static str,
    /// Offset of the field in the parsed buffer.
    pub offset: usize,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes left at that offset.
    pub available: usize,
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(
        &mut self,
        needed: usize,
        field: &'static str,
    ) -> Result<&'a [u8], Truncated> {
        let truncated = Truncated {
            field,
            offset: self.pos,
            needed,
            available: self.remaining(),
        };
        let end = self.pos.checked_add(needed).ok_or(truncated.clone())?;
        let out = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Truncated> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16_be(&mut self, field: &'static str) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32_be(&mut self, field: &'static str) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64_be(&mut self, field: &'static str) -> Result<u64, Truncated> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16_le(&mut self, field: &'static str) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32_le(&mut self, field: &'static str) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64_le(&mut self, field: &'static str) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

/// Little-endian fields at fixed offsets (PE headers): `None` when out of bounds.
pub(crate) fn le_u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let end = offset.checked_add(2)?;
    let b = bytes.get(offset..end)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

pub(crate) fn le_u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let mut out = [0u8; 4];
    out.copy_from_slice(bytes.get(offset..end)?);
    Some(u32::from_le_bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_named_errors() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16_be("a").unwrap(), 0x0102);
        let err = r.u16_be("b").unwrap_err();
        assert_eq!(
            err,
            Truncated {
                field: "b",
                offset: 2,
                needed: 2,
                available: 1
            }
        );
        assert!(r.take(usize::MAX, "huge").is_err());
        assert_eq!(le_u32_at(&[1, 0, 0, 0], 0), Some(1));
        assert_eq!(le_u32_at(&[1, 0, 0], 0), None);
        assert_eq!(le_u16_at(&[1, 0], usize::MAX), None);
    }
}
