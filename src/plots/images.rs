//! Grids of generated images as one SVG: each image is an inline PNG (`data:` URI), so the
//! figure stays a single self-contained file that the report can inline.
//!
//! The PNG encoder is the smallest valid one (8-bit RGB, filter 0, stored deflate blocks):
//! images here are 32x32, and a compressor would be a dependency for a few kilobytes.

use std::fmt::Write as _;

use candle_core::{DType, Tensor};

use super::{PlotError, Result, FONT, TITLE_SIZE};

/// CRC-32 (ISO-HDLC), as PNG chunks need.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// PNG bytes of an RGB image (`rgb` row-major, 3 bytes per pixel).
pub fn png_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((width as usize * 3 + 1) * height as usize);
    for row in rgb.chunks(width as usize * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    // zlib stream of stored (uncompressed) deflate blocks of at most 65535 bytes.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// An image tensor `[3, H, W]` in [-1, 1] as PNG bytes.
pub fn png_of(image: &Tensor) -> Result<Vec<u8>> {
    let err = |e: candle_core::Error| PlotError {
        title: "image".into(),
        detail: e.to_string(),
    };
    let (c, h, w) = image.dims3().map_err(err)?;
    let v: Vec<f32> = image
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(err)?;
    let mut rgb = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                let v = v[(ch.min(c - 1) * h + y) * w + x];
                rgb.push(((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
            }
        }
    }
    Ok(png_rgb(w as u32, h as u32, &rgb))
}

/// Columns of images under a title, each column labelled (e.g. `alpha 2`), images scaled
/// up without smoothing.
pub fn grid(title: &str, columns: &[(String, Vec<Tensor>)]) -> Result<String> {
    let cell = 96u32;
    let rows = columns.iter().map(|c| c.1.len()).max().unwrap_or(0) as u32;
    let (w, h) = (40 + cell * columns.len() as u32 + 20, 90 + cell * rows + 10);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{}\" y=\"30\" font-family=\"{FONT}\" font-size=\"{TITLE_SIZE}\" text-anchor=\"middle\">{}</text>",
        w / 2,
        crate::report::html::escape(title)
    );
    for (i, (label, images)) in columns.iter().enumerate() {
        let x = 40 + cell * i as u32;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"75\" font-family=\"{FONT}\" font-size=\"15\" text-anchor=\"middle\">{}</text>",
            x + cell / 2,
            crate::report::html::escape(label)
        );
        for (j, img) in images.iter().enumerate() {
            let data = base64(&png_of(img)?);
            let _ = write!(
                s,
                "<image x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{data}\"/>",
                x + 4,
                90 + cell * j as u32 + 4,
                cell - 8,
                cell - 8
            );
        }
    }
    s.push_str("</svg>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_standard_check_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
    }

    #[test]
    fn a_png_has_its_signature_header_and_every_pixel() {
        let png = png_rgb(2, 1, &[255, 0, 0, 0, 0, 255]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        // The stored block holds the two filtered rows verbatim: 0, R G B, R G B.
        let at = png.windows(7).position(|w| w == [0, 255, 0, 0, 0, 0, 255]);
        assert!(at.is_some());
        assert!(png.ends_with(&[0xAE, 0x42, 0x60, 0x82]), "IEND's CRC");
    }
}
