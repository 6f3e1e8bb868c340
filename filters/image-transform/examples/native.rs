//! The image filter's transform run natively, for the benchmark in
//! `loadtest/images.py` (the same code the Wasm component runs):
//!
//!   native gen OUT.jpg WIDTH HEIGHT      write a photo-like test JPEG (q90)
//!   native bench IN.jpg N QUERY          transform N times, print ms per image

use image::ImageEncoder;
use image_transform::options::Options;
use image_transform::transform::{transform, Limits};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => {
            let (w, h): (u32, u32) = (args[3].parse().unwrap(), args[4].parse().unwrap());
            // Smooth gradients plus texture, so the JPEG has photo-like entropy.
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) >> 27;
                image::Rgb([
                    ((x * 255 / w) as u8).wrapping_add(n as u8),
                    ((y * 255 / h) as u8).wrapping_add((n >> 1) as u8),
                    (((x + y) / 7) % 256) as u8,
                ])
            });
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
            std::fs::write(&args[2], out).unwrap();
        }
        Some("bench") => {
            let input = std::fs::read(&args[2]).unwrap();
            let n: usize = args[3].parse().unwrap();
            let o = Options::parse(&args[4], 8192).unwrap().unwrap();
            let limits = Limits {
                max_input_bytes: 64 << 20,
                max_source_pixels: 100_000_000,
                max_dimension: 8192,
            };
            let (out, _) = transform(&input, &o, false, 80, &limits).unwrap();
            let started = Instant::now();
            for _ in 0..n {
                std::hint::black_box(transform(&input, &o, false, 80, &limits).unwrap());
            }
            let ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
            println!("{ms:.3} ms/image ({} bytes out)", out.len());
        }
        _ => {
            eprintln!("usage: native gen OUT W H | native bench IN N QUERY");
            std::process::exit(2);
        }
    }
}
