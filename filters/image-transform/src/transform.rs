//! Decode guards, decoding (JPEGs at reduced DCT scale when shrinking),
//! orientation, resize/crop/pad and encoding. Pure Rust, no host calls, so
//! it runs natively too (the benchmark compares both).

use crate::options::{Fit, Format, Options};
use fast_image_resize as fr;
use image::{ImageDecoder, ImageEncoder};
use std::io::Cursor;

/// Limits checked before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded input.
    pub max_input_bytes: usize,
    /// Largest source (width × height).
    pub max_source_pixels: u64,
    /// Largest output width or height.
    pub max_dimension: u32,
}

/// Why a transform did not happen; each maps to one status.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// 413: the input is over `max_input_bytes`.
    TooLarge(String),
    /// 422: the source has too many pixels.
    TooManyPixels(String),
    /// 415: not a format (or a feature) this filter handles.
    Unsupported(String),
    /// 502: the origin's image cannot be decoded.
    Corrupt(String),
}

impl Failure {
    /// The HTTP status and a short reason.
    pub fn status(&self) -> (u16, &str) {
        match self {
            Failure::TooLarge(m) => (413, m),
            Failure::TooManyPixels(m) => (422, m),
            Failure::Unsupported(m) => (415, m),
            Failure::Corrupt(m) => (502, m),
        }
    }
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Jpeg,
    Png,
    Webp,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Jpeg,
    Png,
    Webp,
}

impl Target {
    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Target::Jpeg => "image/jpeg",
            Target::Png => "image/png",
            Target::Webp => "image/webp",
        }
    }
}

/// The input format, from its first bytes.
pub fn sniff(b: &[u8]) -> Result<Source, Failure> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(Source::Jpeg)
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(Source::Png)
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Ok(Source::Webp)
    } else if b.starts_with(b"GIF8") {
        Err(Failure::Unsupported("GIF images are not supported".into()))
    } else {
        Err(Failure::Unsupported("not a JPEG, PNG or WebP image".into()))
    }
}

/// Picks the output format: an explicit one, or for `auto` (and none) the
/// best the client takes for this source. WebP is only written lossless
/// here, so photos (JPEG sources) stay JPEG; PNG and WebP sources become
/// WebP when the client accepts it.
pub fn target(source: Source, asked: Option<Format>, webp_ok: bool) -> Target {
    match asked {
        Some(Format::Jpeg) => Target::Jpeg,
        Some(Format::Png) => Target::Png,
        Some(Format::Webp) => Target::Webp,
        Some(Format::Auto) => match source {
            Source::Jpeg => Target::Jpeg,
            Source::Png | Source::Webp if webp_ok => Target::Webp,
            Source::Png | Source::Webp => Target::Png,
        },
        None => match source {
            Source::Jpeg => Target::Jpeg,
            Source::Png => Target::Png,
            Source::Webp => Target::Webp,
        },
    }
}

/// EXIF orientation (1–8) from a JPEG's APP1 TIFF block.
fn exif_orientation(exif: &[u8]) -> u8 {
    let Some(tiff) = exif.strip_prefix(b"Exif\0\0").or(Some(exif)) else {
        return 1;
    };
    if tiff.len() < 8 {
        return 1;
    }
    let le = &tiff[..2] == b"II";
    let u16_at = |o: usize| -> Option<u16> {
        let b = tiff.get(o..o + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = tiff.get(o..o + 4)?;
        Some(if le {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    let Some(ifd) = u32_at(4).map(|v| v as usize) else {
        return 1;
    };
    let count = u16_at(ifd).unwrap_or(0) as usize;
    for i in 0..count.min(64) {
        let e = ifd + 2 + i * 12;
        if u16_at(e) == Some(0x0112) {
            return u16_at(e + 8)
                .filter(|o| (1..=8).contains(o))
                .map_or(1, |o| o as u8);
        }
    }
    1
}

/// An RGB or RGBA image.
struct Pixels {
    data: Vec<u8>,
    width: u32,
    height: u32,
    alpha: bool,
}

impl Pixels {
    fn channels(&self) -> usize {
        if self.alpha {
            4
        } else {
            3
        }
    }

    /// Applies EXIF orientation `o` then a clockwise rotation.
    fn orient(self, o: u8, rotate: u16) -> Pixels {
        if o == 1 && rotate == 0 {
            return self;
        }
        let alpha = self.alpha;
        macro_rules! apply {
            ($img:expr) => {{
                use image::imageops as ops;
                let img = $img;
                let img = match o {
                    2 => ops::flip_horizontal(&img),
                    3 => ops::rotate180(&img),
                    4 => ops::flip_vertical(&img),
                    5 => ops::flip_horizontal(&ops::rotate90(&img)),
                    6 => ops::rotate90(&img),
                    7 => ops::flip_horizontal(&ops::rotate270(&img)),
                    8 => ops::rotate270(&img),
                    _ => img,
                };
                let img = match rotate {
                    90 => ops::rotate90(&img),
                    180 => ops::rotate180(&img),
                    270 => ops::rotate270(&img),
                    _ => img,
                };
                let (width, height) = img.dimensions();
                Pixels {
                    data: img.into_raw(),
                    width,
                    height,
                    alpha,
                }
            }};
        }
        if alpha {
            apply!(
                image::RgbaImage::from_raw(self.width, self.height, self.data).unwrap_or_default()
            )
        } else {
            apply!(
                image::RgbImage::from_raw(self.width, self.height, self.data).unwrap_or_default()
            )
        }
    }
}

fn corrupt(e: impl std::fmt::Display) -> Failure {
    Failure::Corrupt(format!("the origin's image cannot be decoded: {e}"))
}

/// Source dimensions and orientation, read from the header only.
fn probe(input: &[u8], source: Source) -> Result<(u32, u32, u8), Failure> {
    match source {
        Source::Jpeg => {
            let mut d = jpeg_decoder::Decoder::new(Cursor::new(input));
            d.read_info().map_err(corrupt)?;
            let info = d.info().ok_or_else(|| corrupt("no frame header"))?;
            let o = d.exif_data().map_or(1, exif_orientation);
            Ok((u32::from(info.width), u32::from(info.height), o))
        }
        Source::Png => {
            if has_png_chunk(input, b"acTL") {
                return Err(Failure::Unsupported(
                    "animated PNGs are not supported".into(),
                ));
            }
            let d = image::codecs::png::PngDecoder::new(Cursor::new(input)).map_err(corrupt)?;
            let (w, h) = d.dimensions();
            Ok((w, h, 1))
        }
        Source::Webp => {
            let d = image::codecs::webp::WebPDecoder::new(Cursor::new(input)).map_err(corrupt)?;
            if d.has_animation() {
                return Err(Failure::Unsupported(
                    "animated WebP images are not supported".into(),
                ));
            }
            let (w, h) = d.dimensions();
            Ok((w, h, 1))
        }
    }
}

/// Whether a PNG has a chunk of this type before its image data.
fn has_png_chunk(png: &[u8], kind: &[u8; 4]) -> bool {
    let mut at = 8;
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]) as usize;
        let t = &png[at + 4..at + 8];
        if t == kind {
            return true;
        }
        if t == b"IDAT" {
            return false;
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    false
}

/// The geometry of one transform.
#[derive(Debug, PartialEq)]
struct Plan {
    /// Size the (oriented) source is resized to before cropping.
    resize: (u32, u32),
    /// Crop of the resized image: (x, y, w, h).
    crop: (u32, u32, u32, u32),
    /// Final canvas (≥ crop when padding).
    canvas: (u32, u32),
}

fn plan(src: (u32, u32), o: &Options, max: u32) -> Plan {
    let (sw, sh) = (src.0 as f64, src.1 as f64);
    let (bw, bh) = o.box_size(max);
    let fit = |s: f64| {
        (
            (s * sw).round().max(1.0) as u32,
            (s * sh).round().max(1.0) as u32,
        )
    };
    let cap = |s: f64| s.min(max as f64 / sw).min(max as f64 / sh);
    let whole = |(w, h): (u32, u32)| Plan {
        resize: (w, h),
        crop: (0, 0, w, h),
        canvas: (w, h),
    };
    match (bw, bh) {
        (None, None) => whole(fit(cap(1.0))),
        (Some(w), None) => {
            let mut s = w as f64 / sw;
            if o.fit == Fit::ScaleDown || o.fit == Fit::Crop {
                s = s.min(1.0);
            }
            whole(fit(cap(s)))
        }
        (None, Some(h)) => {
            let mut s = h as f64 / sh;
            if o.fit == Fit::ScaleDown || o.fit == Fit::Crop {
                s = s.min(1.0);
            }
            whole(fit(cap(s)))
        }
        (Some(w), Some(h)) => {
            let (fw, fh) = (w as f64 / sw, h as f64 / sh);
            match o.fit {
                Fit::ScaleDown => whole(fit(cap(fw.min(fh).min(1.0)))),
                Fit::Contain => whole(fit(cap(fw.min(fh)))),
                Fit::Pad => {
                    let p = whole(fit(cap(fw.min(fh))));
                    Plan {
                        canvas: (w, h),
                        ..p
                    }
                }
                Fit::Cover | Fit::Crop => {
                    let mut s = fw.max(fh);
                    if o.fit == Fit::Crop {
                        s = s.min(1.0);
                    }
                    let (rw, rh) = fit(s);
                    let (cw, ch) = (w.min(rw), h.min(rh));
                    let (gx, gy) = o.gravity.weights();
                    let x = (rw - cw) * gx / 2;
                    let y = (rh - ch) * gy / 2;
                    Plan {
                        resize: (rw, rh),
                        crop: (x, y, cw, ch),
                        canvas: (cw, ch),
                    }
                }
            }
        }
    }
}

/// Decodes, orients, resizes, crops/pads and encodes.
pub fn transform(
    input: &[u8],
    o: &Options,
    webp_ok: bool,
    default_quality: u8,
    limits: &Limits,
) -> Result<(Vec<u8>, Target), Failure> {
    if input.len() > limits.max_input_bytes {
        return Err(Failure::TooLarge(format!(
            "the source image is {} bytes, over the limit of {}",
            input.len(),
            limits.max_input_bytes
        )));
    }
    let source = sniff(input)?;
    let (w, h, orientation) = probe(input, source)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_source_pixels {
        return Err(Failure::TooManyPixels(format!(
            "the source image has {pixels} pixels ({w}x{h}), over the limit of {}",
            limits.max_source_pixels
        )));
    }
    let swapped = (orientation >= 5) ^ (o.rotate == 90 || o.rotate == 270);
    let oriented = if swapped { (h, w) } else { (w, h) };
    let p = plan(oriented, o, limits.max_dimension);
    let target = target(source, o.format, webp_ok);

    // Decode, at reduced DCT scale when the JPEG shrinks by 2x or more.
    let decoded = match source {
        Source::Jpeg => {
            let mut d = jpeg_decoder::Decoder::new(Cursor::new(input));
            d.read_info().map_err(corrupt)?;
            let (want_w, want_h) = if swapped {
                (p.resize.1, p.resize.0)
            } else {
                (p.resize.0, p.resize.1)
            };
            let (dw, dh) = d
                .scale(
                    want_w.min(u32::from(u16::MAX)) as u16,
                    want_h.min(u32::from(u16::MAX)) as u16,
                )
                .map_err(corrupt)?;
            let raw = d.decode().map_err(corrupt)?;
            let info = d.info().ok_or_else(|| corrupt("no frame header"))?;
            let rgb = match info.pixel_format {
                jpeg_decoder::PixelFormat::RGB24 => raw,
                jpeg_decoder::PixelFormat::L8 => raw.iter().flat_map(|&g| [g, g, g]).collect(),
                jpeg_decoder::PixelFormat::CMYK32 => raw
                    .chunks_exact(4)
                    .flat_map(|c| {
                        let k = 255 - u16::from(c[3]);
                        let f = |v: u8| ((255 - u16::from(v)) * k / 255) as u8;
                        [f(c[0]), f(c[1]), f(c[2])]
                    })
                    .collect(),
                jpeg_decoder::PixelFormat::L16 => {
                    return Err(Failure::Unsupported(
                        "16-bit JPEGs are not supported".into(),
                    ))
                }
            };
            Pixels {
                data: rgb,
                width: u32::from(dw),
                height: u32::from(dh),
                alpha: false,
            }
        }
        Source::Png | Source::Webp => {
            let fmt = if source == Source::Png {
                image::ImageFormat::Png
            } else {
                image::ImageFormat::WebP
            };
            let img = image::load_from_memory_with_format(input, fmt).map_err(corrupt)?;
            if img.color().has_alpha() {
                let i = img.into_rgba8();
                let (width, height) = i.dimensions();
                Pixels {
                    data: i.into_raw(),
                    width,
                    height,
                    alpha: true,
                }
            } else {
                let i = img.into_rgb8();
                let (width, height) = i.dimensions();
                Pixels {
                    data: i.into_raw(),
                    width,
                    height,
                    alpha: false,
                }
            }
        }
    };
    let img = decoded.orient(orientation, o.rotate);
    let img = resize(img, &p)?;
    let img = pad(img, &p, target);
    let quality = o.quality.unwrap_or(default_quality);
    Ok((encode(img, target, quality)?, target))
}

fn resize(img: Pixels, p: &Plan) -> Result<Pixels, Failure> {
    let (rw, rh) = p.resize;
    let (cx, cy, cw, ch) = p.crop;
    if (img.width, img.height) == (cw, ch) && (rw, rh) == (cw, ch) {
        return Ok(img);
    }
    let kind = if img.alpha {
        fr::PixelType::U8x4
    } else {
        fr::PixelType::U8x3
    };
    let alpha = img.alpha;
    let src = fr::images::Image::from_vec_u8(img.width, img.height, img.data, kind)
        .map_err(|e| Failure::Corrupt(e.to_string()))?;
    let mut dst = fr::images::Image::new(cw, ch, kind);
    // The crop, in source pixels (the source may be a DCT-scaled decode).
    let (sx, sy) = (
        f64::from(src.width()) / f64::from(rw),
        f64::from(src.height()) / f64::from(rh),
    );
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .crop(
            f64::from(cx) * sx,
            f64::from(cy) * sy,
            f64::from(cw) * sx,
            f64::from(ch) * sy,
        );
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| Failure::Corrupt(e.to_string()))?;
    Ok(Pixels {
        width: cw,
        height: ch,
        data: dst.into_vec(),
        alpha,
    })
}

fn pad(img: Pixels, p: &Plan, target: Target) -> Pixels {
    let (w, h) = p.canvas;
    if (img.width, img.height) == (w, h) {
        return img;
    }
    let transparent = target != Target::Jpeg;
    let alpha = img.alpha || transparent;
    let ch = if alpha { 4 } else { 3 };
    let fill: &[u8] = if transparent {
        &[255, 255, 255, 0]
    } else {
        &[255, 255, 255, 255]
    };
    let mut data: Vec<u8> = fill[..ch]
        .iter()
        .copied()
        .cycle()
        .take(w as usize * h as usize * ch)
        .collect();
    let ox = (w - img.width.min(w)) / 2;
    let oy = (h - img.height.min(h)) / 2;
    let src_ch = img.channels();
    for y in 0..img.height.min(h) {
        for x in 0..img.width.min(w) {
            let s = (y as usize * img.width as usize + x as usize) * src_ch;
            let d = ((y + oy) as usize * w as usize + (x + ox) as usize) * ch;
            data[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
            if ch == 4 {
                data[d + 3] = if src_ch == 4 { img.data[s + 3] } else { 255 };
            }
        }
    }
    Pixels {
        data,
        width: w,
        height: h,
        alpha,
    }
}

fn encode(img: Pixels, target: Target, quality: u8) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::with_capacity(img.data.len() / 8 + 1024);
    let fail = |e: image::ImageError| Failure::Corrupt(format!("cannot encode: {e}"));
    let (color, data) = match (target, img.alpha) {
        // JPEG has no alpha: composite over white.
        (Target::Jpeg, true) => (
            image::ExtendedColorType::Rgb8,
            img.data
                .chunks_exact(4)
                .flat_map(|p| {
                    let a = u16::from(p[3]);
                    let over = |c: u8| ((u16::from(c) * a + 255 * (255 - a)) / 255) as u8;
                    [over(p[0]), over(p[1]), over(p[2])]
                })
                .collect(),
        ),
        (_, true) => (image::ExtendedColorType::Rgba8, img.data),
        (_, false) => (image::ExtendedColorType::Rgb8, img.data),
    };
    match target {
        Target::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .write_image(&data, img.width, img.height, color)
            .map_err(fail)?,
        Target::Png => image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&data, img.width, img.height, color)
            .map_err(fail)?,
        Target::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(&data, img.width, img.height, color)
            .map_err(fail)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> Options {
        Options::parse(q, 8192).unwrap().unwrap()
    }

    #[test]
    fn plans() {
        let p = plan((1600, 1200), &opts("width=400"), 8192);
        assert_eq!(p.canvas, (400, 300));
        // scale-down never enlarges
        assert_eq!(plan((100, 50), &opts("width=400"), 8192).canvas, (100, 50));
        assert_eq!(
            plan((100, 50), &opts("width=400&fit=contain"), 8192).canvas,
            (400, 200)
        );
        let cover = plan((1600, 1200), &opts("width=300&height=300&fit=cover"), 8192);
        assert_eq!((cover.resize, cover.canvas), ((400, 300), (300, 300)));
        assert_eq!(cover.crop, (50, 0, 300, 300));
        let left = plan(
            (1600, 1200),
            &opts("width=300&height=300&fit=cover&gravity=left"),
            8192,
        );
        assert_eq!(left.crop.0, 0);
        let pad = plan((1600, 1200), &opts("width=300&height=300&fit=pad"), 8192);
        assert_eq!((pad.resize, pad.canvas), ((300, 225), (300, 300)));
        let dpr = plan((1600, 1200), &opts("width=400&dpr=2"), 8192);
        assert_eq!(dpr.canvas, (800, 600));
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    const LIMITS: Limits = Limits {
        max_input_bytes: 10 << 20,
        max_source_pixels: 50_000_000,
        max_dimension: 4096,
    };

    #[test]
    fn resizes_a_jpeg_with_dct_scaling() {
        let input = jpeg(1600, 1200);
        let (out, t) =
            transform(&input, &opts("width=400&quality=80"), false, 80, &LIMITS).unwrap();
        assert_eq!(t, Target::Jpeg);
        let img = image::load_from_memory(&out).unwrap();
        assert_eq!((img.width(), img.height()), (400, 300));
    }

    #[test]
    fn guards_hold_before_decoding() {
        let input = jpeg(400, 300);
        let small = Limits {
            max_source_pixels: 1000,
            ..LIMITS
        };
        assert!(matches!(
            transform(&input, &opts("width=10"), false, 80, &small),
            Err(Failure::TooManyPixels(_))
        ));
        let tiny = Limits {
            max_input_bytes: 10,
            ..LIMITS
        };
        assert!(matches!(
            transform(&input, &opts("width=10"), false, 80, &tiny),
            Err(Failure::TooLarge(_))
        ));
        assert!(matches!(sniff(b"GIF89a..."), Err(Failure::Unsupported(_))));
        let mut broken = input.clone();
        broken.truncate(200);
        assert!(matches!(
            transform(&broken, &opts("width=10"), false, 80, &LIMITS),
            Err(Failure::Corrupt(_))
        ));
    }

    #[test]
    fn exif_orientation_is_read() {
        // Big-endian TIFF, one IFD entry: orientation = 6.
        let mut t = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        t.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
        assert_eq!(exif_orientation(&t), 6);
        assert_eq!(exif_orientation(b"junk"), 1);
    }
}
