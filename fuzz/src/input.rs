//! Fuzz inputs read as a stream of small fields, and written the same way.
//!
//! Reading never fails: past the end every number is 0 and every byte
//! string is empty (or as long as what is left), so that any input is a
//! valid program for a target and libFuzzer's mutations stay meaningful.
//! Numbers are little-endian; a byte string is its length (`u16`, or `u32`
//! for the long ones) followed by that many bytes.

/// Reads fields from a fuzz input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// A `u16`.
    pub fn u16(&mut self) -> u16 {
        let mut out = [0u8; 2];
        let got = self.bytes(2);
        out[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(out)
    }

    /// A `u32`.
    pub fn u32(&mut self) -> u32 {
        let mut out = [0u8; 4];
        let got = self.bytes(4);
        out[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(out)
    }

    /// A number below `n` (`n` > 0), from one byte.
    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n.max(1)
    }

    /// A byte string of at most 65,535 bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16());
        self.bytes(len)
    }

    /// A byte string of any length.
    pub fn long_chunk(&mut self) -> &'a [u8] {
        let len = usize::try_from(self.u32()).unwrap_or(usize::MAX);
        self.bytes(len)
    }

    /// An array of `N` bytes (zeros past the end).
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// Writes fields in the layout [`Reader`] reads.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }

    /// One byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.out.push(value);
        self
    }

    /// A `u16`.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.out.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Raw bytes, without a length.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(value);
        self
    }

    /// A byte string of at most 65,535 bytes (longer ones are cut).
    pub fn chunk(&mut self, value: &[u8]) -> &mut Self {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.u16(len).bytes(&value[..usize::from(len)])
    }

    /// A byte string of any length (up to 4 GiB).
    pub fn long_chunk(&mut self, value: &[u8]) -> &mut Self {
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.u32(len).bytes(&value[..usize::try_from(len).unwrap_or(0)])
    }

    /// The input written so far.
    pub fn finish(&self) -> Vec<u8> {
        self.out.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_the_end_reads_as_zeros() {
        let bytes = Writer::new().u8(7).u16(300).u32(70_000).chunk(b"abc").long_chunk(b"defg").finish();
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8(), 7);
        assert_eq!(reader.u16(), 300);
        assert_eq!(reader.u32(), 70_000);
        assert_eq!(reader.chunk(), b"abc");
        assert_eq!(reader.long_chunk(), b"defg");
        assert!(reader.is_empty());
        assert_eq!((reader.u8(), reader.u32(), reader.chunk()), (0, 0, &b""[..]));
        // A length longer than what is left takes what is left.
        let mut reader = Reader::new(&[5, 0, 1, 2]);
        assert_eq!(reader.chunk(), &[1, 2]);
    }
}
