//! Which compressors and levels each artifact format accepts (`[filesystem] compression` and
//! `compression_level`), and their defaults. One table, so validation, docs and packers agree.

use std::fmt;
use std::ops::RangeInclusive;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    None,
    Gzip,
    Zstd,
    Lz4,
    Lz4hc,
    Xz,
}

impl Compressor {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::Lz4hc => "lz4hc",
            Self::Xz => "xz",
        }
    }
}

impl fmt::Display for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The artifact formats that compress, each with its own compressor menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Initramfs,
    Squashfs,
    Erofs,
    /// ext4, xfs, btrfs: no compression.
    Uncompressed,
}

/// One accepted compressor: its levels (`None` = takes no level) and default level.
pub struct Choice {
    pub compressor: Compressor,
    pub levels: Option<RangeInclusive<u32>>,
    pub default_level: u32,
}

const fn choice(compressor: Compressor, levels: Option<RangeInclusive<u32>>, default_level: u32) -> Choice {
    Choice { compressor, levels, default_level }
}

const INITRAMFS: &[Choice] = &[
    choice(Compressor::Gzip, Some(1..=9), 9),
    choice(Compressor::Zstd, Some(1..=22), 19),
    choice(Compressor::Lz4, Some(1..=12), 9),
    choice(Compressor::None, None, 0),
];
// xz keeps the original's 0–22 scale (0 = default 15), which selects the dictionary size.
const SQUASHFS: &[Choice] = &[
    choice(Compressor::Xz, Some(0..=22), 15),
    choice(Compressor::Zstd, Some(1..=22), 15),
    choice(Compressor::Gzip, Some(1..=9), 9),
    choice(Compressor::Lz4, None, 0),
];
const EROFS: &[Choice] =
    &[choice(Compressor::Lz4hc, Some(1..=12), 9), choice(Compressor::Lz4, None, 0), choice(Compressor::None, None, 0)];

impl Packing {
    /// The accepted compressors, the default first.
    pub fn choices(self) -> &'static [Choice] {
        match self {
            Self::Initramfs => INITRAMFS,
            Self::Squashfs => SQUASHFS,
            Self::Erofs => EROFS,
            Self::Uncompressed => &[],
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Initramfs => "initramfs",
            Self::Squashfs => "squashfs",
            Self::Erofs => "erofs",
            Self::Uncompressed => "this filesystem type",
        }
    }
}

/// A validated compressor and the level to use with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub compressor: Compressor,
    /// `None` for compressors without levels.
    pub level: Option<u32>,
}

/// Picks the compressor and level for `packing` from what the user wrote.
/// Errors say what is accepted; the caller attaches the location.
pub fn resolve(
    packing: Packing,
    name: Option<&str>,
    level: Option<i64>,
) -> Result<Option<Compression>, (Field, String)> {
    let choices = packing.choices();
    let Some(default) = choices.first() else {
        if name.is_some() {
            return Err((Field::Compressor, format!("{} is not compressed; remove `compression`", packing.describe())));
        }
        return Ok(None);
    };
    let choice = match name {
        None => default,
        Some(name) => choices.iter().find(|c| c.compressor.name() == name).ok_or_else(|| {
            let names: Vec<_> = choices.iter().map(|c| c.compressor.name()).collect();
            (
                Field::Compressor,
                format!(
                    "invalid compression '{name}' for {}, must be one of: {}",
                    packing.describe(),
                    names.join(", ")
                ),
            )
        })?,
    };
    let level = match (&choice.levels, level) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err((
                Field::Level,
                format!("compression '{}' takes no compression_level; remove it", choice.compressor),
            ));
        }
        (Some(_), None) => Some(choice.default_level),
        (Some(range), Some(level)) => {
            let ok = u32::try_from(level).ok().filter(|l| range.contains(l));
            let level = ok.ok_or_else(|| {
                (
                    Field::Level,
                    format!(
                        "{} compression_level for {} must be between {}-{}, got {level}",
                        choice.compressor,
                        packing.describe(),
                        range.start(),
                        range.end()
                    ),
                )
            })?;
            Some(if choice.compressor == Compressor::Xz && level == 0 { choice.default_level } else { level })
        }
    };
    Ok(Some(Compression { compressor: choice.compressor, level }))
}

/// Which key a compression error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Compressor,
    Level,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_per_packing() {
        let c = resolve(Packing::Initramfs, None, None).unwrap().unwrap();
        assert_eq!((c.compressor, c.level), (Compressor::Gzip, Some(9)));
        let c = resolve(Packing::Squashfs, None, None).unwrap().unwrap();
        assert_eq!((c.compressor, c.level), (Compressor::Xz, Some(15)));
        assert_eq!(resolve(Packing::Uncompressed, None, None).unwrap(), None);
    }

    #[test]
    fn levels_are_checked_against_the_chosen_compressor() {
        assert_eq!(resolve(Packing::Initramfs, Some("zstd"), Some(22)).unwrap().unwrap().level, Some(22));
        let (field, msg) = resolve(Packing::Initramfs, Some("gzip"), Some(10)).unwrap_err();
        assert_eq!(field, Field::Level);
        assert!(msg.contains("between 1-9, got 10"), "{msg}");
        assert_eq!(resolve(Packing::Initramfs, Some("none"), Some(3)).unwrap_err().0, Field::Level);
        assert_eq!(resolve(Packing::Squashfs, Some("xz"), Some(0)).unwrap().unwrap().level, Some(15));
        let (field, msg) = resolve(Packing::Initramfs, Some("xz"), None).unwrap_err();
        assert_eq!(field, Field::Compressor);
        assert!(msg.contains("gzip, zstd, lz4, none"), "{msg}");
    }
}
