//! Where a failed step is written: its lines in the Dockerfile, from the definition's source
//! map, so a failure reads as BuildKit's does (`--> Dockerfile:3` and the line) instead of a
//! bare message. A definition without a source map (an LLB file) gets its errors unchanged.
//! The failure stays the located error's source, so what it is can still be asked of it.

use std::collections::HashMap;
use std::fmt;

use fledge_llb::pb;

use crate::diagnostic::{Diagnostic, SourceFile};

/// The definition's source files and, per op digest, the file and first line it comes from.
pub struct SourceMap {
    files: Vec<SourceFile>,
    lines: HashMap<String, (usize, usize)>,
}

impl SourceMap {
    pub fn new(definition: &pb::Definition) -> Self {
        let Some(source) = &definition.source else {
            return Self { files: Vec::new(), lines: HashMap::new() };
        };
        let files = source
            .infos
            .iter()
            .map(|info| {
                let text = String::from_utf8_lossy(&info.data).into_owned();
                SourceFile::new(std::path::Path::new(&info.filename), text)
            })
            .collect();
        let lines = source
            .locations
            .iter()
            .filter_map(|(digest, locations)| {
                let location = locations.locations.first()?;
                let line = location.ranges.first()?.start.as_ref()?.line;
                Some((digest.clone(), (usize::try_from(location.source_index).ok()?, usize::try_from(line).ok()?)))
            })
            .collect();
        Self { files, lines }
    }

    /// `error`, the failure of op `digest`, with the line that op comes from.
    pub fn locate(&self, digest: &str, error: anyhow::Error) -> anyhow::Error {
        let Some((file, line)) = self.lines.get(digest).and_then(|&(i, line)| Some((self.files.get(i)?, line))) else {
            return error;
        };
        let diagnostic = Diagnostic::new(file, file.line_span(line), format!("{error:#}"));
        StepFailed { diagnostic, source: error }.into()
    }
}

/// A step's failure shown at its line.
#[derive(Debug)]
struct StepFailed {
    diagnostic: Diagnostic,
    source: anyhow::Error,
}

impl fmt::Display for StepFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.diagnostic.fmt(f)
    }
}

impl std::error::Error for StepFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(locations: &[(&str, i32)]) -> pb::Definition {
        let locations = locations
            .iter()
            .map(|&(digest, line)| {
                let range = pb::Range {
                    start: Some(pb::Position { line, character: 0 }),
                    end: Some(pb::Position { line, character: 0 }),
                };
                let location = pb::Location { source_index: 0, ranges: vec![range] };
                (digest.to_string(), pb::Locations { locations: vec![location] })
            })
            .collect();
        pb::Definition {
            source: Some(pb::Source {
                locations,
                infos: vec![pb::SourceInfo {
                    filename: "Dockerfile".into(),
                    data: b"FROM scratch\nCOPY a /a\n".to_vec(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_step_with_a_line_is_shown_there_and_keeps_its_cause() {
        let map = SourceMap::new(&definition(&[("sha256:copy", 2)]));
        let error = map.locate("sha256:copy", anyhow::anyhow!("inner").context("outer"));
        let shown = error.to_string();
        assert!(shown.starts_with("outer: inner\n  --> Dockerfile:2:1"), "{shown}");
        assert!(shown.contains("2 | COPY a /a"), "{shown}");
        assert_eq!(error.chain().nth(1).map(ToString::to_string).as_deref(), Some("outer"));
    }

    #[test]
    fn a_step_without_a_line_is_unchanged() {
        let map = SourceMap::new(&definition(&[("sha256:copy", 2)]));
        assert_eq!(map.locate("sha256:other", anyhow::anyhow!("bare")).to_string(), "bare");
        let bare = SourceMap::new(&pb::Definition::default());
        assert_eq!(bare.locate("sha256:copy", anyhow::anyhow!("bare")).to_string(), "bare");
    }
}
