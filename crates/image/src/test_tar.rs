//! A tiny tar writer for tests (feature `test-util`): it writes exactly the bytes asked for, including the
//! malformed and malicious entries (`..`, symlink escapes, missing end blocks) that real tar writers refuse
//! to produce, so the unpacker's refusals can be tested against real streams.

use std::path::Path;

/// The mtime every entry gets, so tests can check it was kept.
pub const MTIME: i64 = 1_704_067_200;

#[derive(Default)]
pub struct TarBuilder {
    out: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(path, b'5', mode, 0, 0, b"", "", (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.entry(path, b'0', mode, 0, 0, data, "", (0, 0), &[])
    }

    pub fn file_owned(&mut self, path: &str, data: &[u8], mode: u32, uid: u32, gid: u32) -> &mut Self {
        self.entry(path, b'0', mode, uid, gid, data, "", (0, 0), &[])
    }

    pub fn file_with_xattr(&mut self, path: &str, data: &[u8], mode: u32, name: &str, value: &[u8]) -> &mut Self {
        self.entry(path, b'0', mode, 0, 0, data, "", (0, 0), &[(name, value)])
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, b'2', 0o777, 0, 0, b"", target, (0, 0), &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, b'1', 0o644, 0, 0, b"", target, (0, 0), &[])
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(path, b'3', 0o666, 0, 0, b"", "", (major, minor), &[])
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.entry(path, b'6', 0o644, 0, 0, b"", "", (0, 0), &[])
    }

    /// The archive with its two zero blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// [`TarBuilder::finish`] with every `{OUTSIDE}` in names and link targets replaced by `root` (a
    /// directory outside the snapshot that a test then checks stayed empty). Headers are rebuilt, so the
    /// placeholder must only be used where the replacement still fits.
    pub fn finish_with_root(&self, root: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let text = root.to_str().expect("utf-8 temp path");
        let mut offset = 0;
        let data = self.finish();
        while offset + 512 <= data.len() {
            let mut block: [u8; 512] = data[offset..offset + 512].try_into().unwrap();
            offset += 512;
            if block.iter().all(|b| *b == 0) {
                out.extend_from_slice(&block);
                continue;
            }
            let size = parse_octal(&block[124..136]) as usize;
            for range in [0..100, 157..257] {
                let field = &block[range.clone()];
                let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
                let value = String::from_utf8_lossy(&field[..end]).replace("{OUTSIDE}", text);
                let mut new = [0u8; 100];
                new[..value.len()].copy_from_slice(value.as_bytes());
                block[range].copy_from_slice(&new);
            }
            checksum(&mut block);
            out.extend_from_slice(&block);
            let padded = size.div_ceil(512) * 512;
            out.extend_from_slice(&data[offset..offset + padded]);
            offset += padded;
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        path: &str,
        kind: u8,
        mode: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
        link: &str,
        device: (u32, u32),
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut pax = Vec::new();
        if path.len() > 100 {
            pax.extend(record("path", path.as_bytes()));
        }
        for (name, value) in xattrs {
            pax.extend(record(&format!("SCHILY.xattr.{name}"), value));
        }
        if !pax.is_empty() {
            let header = header("PaxHeader", b'x', 0o644, 0, 0, pax.len(), "", (0, 0));
            self.out.extend_from_slice(&header);
            self.push_data(&pax);
        }
        let short = if path.len() > 100 { &path[..100] } else { path };
        let header = header(short, kind, mode, uid, gid, data.len(), link, device);
        self.out.extend_from_slice(&header);
        self.push_data(data);
        self
    }

    fn push_data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let pad = data.len().div_ceil(512) * 512 - data.len();
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }
}

fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = 1 + key.len() + 1 + value.len() + 1; // " key=value\n"
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

#[allow(clippy::too_many_arguments)]
fn header(
    path: &str,
    kind: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: usize,
    link: &str,
    device: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], uid as u64);
    octal(&mut h[116..124], gid as u64);
    octal(&mut h[124..136], size as u64);
    octal(&mut h[136..148], MTIME as u64);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], device.0 as u64);
    octal(&mut h[337..345], device.1 as u64);
    checksum(&mut h);
    h
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    field[..text.len()].copy_from_slice(text.as_bytes());
    field[text.len()] = 0;
}

fn parse_octal(field: &[u8]) -> u64 {
    let text: String = field.iter().take_while(|b| **b != 0 && **b != b' ').map(|b| *b as char).collect();
    u64::from_str_radix(&text, 8).unwrap_or(0)
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
}
