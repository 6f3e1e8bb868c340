//! Transform options from the query string: parsed, checked and put in one
//! canonical form (sorted, defaults dropped) that is both the cache-key part
//! and the message a signed URL signs.

use std::fmt::Write as _;

/// How the image fits a `width` × `height` box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Fit inside the box, never enlarge (default).
    ScaleDown,
    /// Fit inside the box, enlarging if needed.
    Contain,
    /// Fill the box exactly, cropping what overflows (may enlarge).
    Cover,
    /// Like cover, but never enlarge.
    Crop,
    /// Fit inside the box, then pad to exactly the box.
    Pad,
}

/// Where a crop keeps the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gravity {
    Center,
    Top,
    Bottom,
    Left,
    Right,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Gravity {
    /// Its option value.
    pub fn name(self) -> &'static str {
        match self {
            Gravity::Center => "center",
            Gravity::Top => "top",
            Gravity::Bottom => "bottom",
            Gravity::Left => "left",
            Gravity::Right => "right",
            Gravity::TopLeft => "top-left",
            Gravity::TopRight => "top-right",
            Gravity::BottomLeft => "bottom-left",
            Gravity::BottomRight => "bottom-right",
        }
    }

    /// (x, y) weights in 0..=2: 0 = start, 1 = centre, 2 = end.
    pub fn weights(self) -> (u32, u32) {
        match self {
            Gravity::Center => (1, 1),
            Gravity::Top => (1, 0),
            Gravity::Bottom => (1, 2),
            Gravity::Left => (0, 1),
            Gravity::Right => (2, 1),
            Gravity::TopLeft => (0, 0),
            Gravity::TopRight => (2, 0),
            Gravity::BottomLeft => (0, 2),
            Gravity::BottomRight => (2, 2),
        }
    }
}

/// Output format asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    /// The best the client's `Accept` allows.
    Auto,
}

/// Parsed options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    pub gravity: Gravity,
    pub dpr: f32,
    pub quality: Option<u8>,
    pub format: Option<Format>,
    pub rotate: u16,
    /// The signature, if any (not part of the canonical form).
    pub sig: Option<String>,
}

/// The option names, for error messages.
pub const NAMES: &str = "width, height, fit, gravity, dpr, quality, format, rotate, sig";

/// A bad option: the status is always 400, the message names the option.
#[derive(Debug, PartialEq)]
pub struct BadOption(pub String);

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, BadOption> {
    v.parse()
        .map_err(|_| BadOption(format!("`{name}`: `{v}` is not a number")))
}

impl Options {
    /// Parses `query` (the part after `?`). `Ok(None)` when it holds no
    /// option at all: the request passes through untouched.
    pub fn parse(query: &str, max_dimension: u32) -> Result<Option<Options>, BadOption> {
        let mut o = Options {
            width: None,
            height: None,
            fit: Fit::ScaleDown,
            gravity: Gravity::Center,
            dpr: 1.0,
            quality: None,
            format: None,
            rotate: 0,
            sig: None,
        };
        let mut any = false;
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if seen.contains(&k) {
                return Err(BadOption(format!("`{k}` is given twice")));
            }
            seen.push(k);
            any = true;
            let dim = |v: &str| -> Result<u32, BadOption> {
                let n: u32 = number(k, v)?;
                if n == 0 || n > max_dimension {
                    return Err(BadOption(format!(
                        "`{k}` must be between 1 and {max_dimension}, got {n}"
                    )));
                }
                Ok(n)
            };
            match k {
                "width" | "w" => o.width = Some(dim(v)?),
                "height" | "h" => o.height = Some(dim(v)?),
                "fit" => {
                    o.fit = match v {
                        "scale-down" => Fit::ScaleDown,
                        "contain" => Fit::Contain,
                        "cover" => Fit::Cover,
                        "crop" => Fit::Crop,
                        "pad" => Fit::Pad,
                        _ => {
                            return Err(BadOption(format!(
                                "`fit`: expected scale-down, contain, cover, crop or pad, got `{v}`"
                            )))
                        }
                    }
                }
                "gravity" => {
                    o.gravity = match v {
                        "center" | "centre" => Gravity::Center,
                        "top" => Gravity::Top,
                        "bottom" => Gravity::Bottom,
                        "left" => Gravity::Left,
                        "right" => Gravity::Right,
                        "top-left" => Gravity::TopLeft,
                        "top-right" => Gravity::TopRight,
                        "bottom-left" => Gravity::BottomLeft,
                        "bottom-right" => Gravity::BottomRight,
                        _ => {
                            return Err(BadOption(format!(
                                "`gravity`: expected center, top, bottom, left, right or a corner (top-left...), got `{v}`"
                            )))
                        }
                    }
                }
                "dpr" => {
                    let d: f32 = number(k, v)?;
                    if !(1.0..=3.0).contains(&d) {
                        return Err(BadOption(format!("`dpr` must be between 1 and 3, got {v}")));
                    }
                    o.dpr = (d * 100.0).round() / 100.0;
                }
                "quality" | "q" => {
                    let q: u8 = number(k, v)?;
                    if !(1..=100).contains(&q) {
                        return Err(BadOption(format!(
                            "`quality` must be between 1 and 100, got {q}"
                        )));
                    }
                    o.quality = Some(q);
                }
                "format" | "f" => {
                    o.format = Some(match v {
                        "jpeg" | "jpg" => Format::Jpeg,
                        "png" => Format::Png,
                        "webp" => Format::Webp,
                        "auto" => Format::Auto,
                        _ => {
                            return Err(BadOption(format!(
                                "`format`: expected jpeg, png, webp or auto, got `{v}`"
                            )))
                        }
                    })
                }
                "rotate" => {
                    o.rotate = match v {
                        "0" | "90" | "180" | "270" => number(k, v)?,
                        _ => {
                            return Err(BadOption(format!(
                                "`rotate` must be 0, 90, 180 or 270, got `{v}`"
                            )))
                        }
                    }
                }
                "sig" => o.sig = Some(v.to_string()),
                other => {
                    return Err(BadOption(format!(
                        "unknown option `{other}` (known: {NAMES})"
                    )))
                }
            }
        }
        if !any {
            return Ok(None);
        }
        if matches!(o.fit, Fit::Cover | Fit::Crop | Fit::Pad)
            && (o.width.is_none() || o.height.is_none())
        {
            return Err(BadOption(format!(
                "`fit={}` needs both `width` and `height`",
                o.fit_name()
            )));
        }
        Ok(Some(o))
    }

    fn fit_name(&self) -> &'static str {
        match self.fit {
            Fit::ScaleDown => "scale-down",
            Fit::Contain => "contain",
            Fit::Cover => "cover",
            Fit::Crop => "crop",
            Fit::Pad => "pad",
        }
    }

    /// The width and height asked for, times `dpr`, capped at `max`.
    pub fn box_size(&self, max: u32) -> (Option<u32>, Option<u32>) {
        let scale = |v: u32| ((v as f32 * self.dpr).round() as u32).clamp(1, max);
        (self.width.map(scale), self.height.map(scale))
    }

    /// The canonical form: options in a fixed order, defaults left out,
    /// short names expanded, `sig` excluded. Equal requests get equal text.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        let mut put = |k: &str, v: &dyn std::fmt::Display| {
            if !s.is_empty() {
                s.push('&');
            }
            let _ = write!(s, "{k}={v}");
        };
        if self.dpr != 1.0 {
            put("dpr", &self.dpr);
        }
        if self.fit != Fit::ScaleDown {
            put("fit", &self.fit_name());
        }
        if let Some(f) = self.format {
            let name = match f {
                Format::Jpeg => "jpeg",
                Format::Png => "png",
                Format::Webp => "webp",
                Format::Auto => "auto",
            };
            put("format", &name);
        }
        if self.gravity != Gravity::Center {
            put("gravity", &self.gravity.name());
        }
        if let Some(h) = self.height {
            put("height", &h);
        }
        if let Some(q) = self.quality {
            put("quality", &q);
        }
        if self.rotate != 0 {
            put("rotate", &self.rotate);
        }
        if let Some(w) = self.width {
            put("width", &w);
        }
        s
    }
}

/// Whether an `Accept` header allows `image/webp`.
pub fn accepts_webp(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q_zero = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        media.eq_ignore_ascii_case("image/webp") && !q_zero
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises() {
        let o = Options::parse("width=400&quality=80&format=auto", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(o.width, Some(400));
        assert_eq!(o.canonical(), "format=auto&quality=80&width=400");
        let o2 = Options::parse("q=80&f=auto&w=400", 8192).unwrap().unwrap();
        assert_eq!(o.canonical(), o2.canonical());
        assert_eq!(Options::parse("", 8192).unwrap(), None);
        // Every canonical form parses back to the same options.
        for q in [
            "fit=crop&width=1&height=2&gravity=bottom-right&dpr=1.5&rotate=270&format=png",
            "w=400&q=80&f=auto",
        ] {
            let o = Options::parse(q, 8192).unwrap().unwrap();
            let back = Options::parse(&o.canonical(), 8192).unwrap().unwrap();
            assert_eq!(o, back);
        }
    }

    #[test]
    fn bad_options_name_themselves() {
        let e = |q| Options::parse(q, 8192).unwrap_err().0;
        assert!(e("width=400&blur=3").contains("unknown option `blur`"));
        assert!(e("width=0").contains("`width` must be between 1 and 8192"));
        assert!(e("width=99999").contains("`width`"));
        assert!(e("dpr=4").contains("`dpr`"));
        assert!(e("fit=cover&width=10").contains("needs both"));
        assert!(e("format=gif").contains("`format`"));
        assert!(e("rotate=45").contains("`rotate`"));
        assert!(e("width=1&width=2").contains("twice"));
    }

    #[test]
    fn dpr_scales_the_box() {
        let o = Options::parse("width=400&height=300&dpr=2", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(o.box_size(8192), (Some(800), Some(600)));
        assert_eq!(o.box_size(700), (Some(700), Some(600)));
    }

    #[test]
    fn webp_negotiation() {
        assert!(accepts_webp("image/avif,image/webp,*/*"));
        assert!(!accepts_webp("image/png,image/*;q=0.8"));
        assert!(!accepts_webp("image/webp;q=0"));
    }
}
