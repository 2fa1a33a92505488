//! An LLB graph under construction: each [`Output`] is an output of an op whose inputs are
//! other outputs. Ops are encoded and digested when created (prost writes fields in tag
//! order, maps as `BTreeMap`, which is Go's deterministic marshalling), so an op's digest is
//! what BuildKit computes for the same op. [`definition`] lists the ops a result needs,
//! inputs before users, and ends with BuildKit's terminal op.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;

#[derive(Debug)]
struct Vertex {
    bytes: Vec<u8>,
    digest: String,
    /// The inputs in the order a definition lists them (see [`Output::visiting`]).
    inputs: Vec<Output>,
    metadata: pb::OpMetadata,
    /// 1-based line ranges in the Dockerfile this op comes from.
    lines: Vec<(i32, i32)>,
}

/// A chain of ops is as long as the Dockerfile makes it: dropping the last one frees the
/// vertices it alone holds one by one, instead of recursing down the chain.
impl Drop for Vertex {
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.inputs);
        while let Some(input) = pending.pop() {
            if let Some(mut vertex) = Arc::into_inner(input.vertex) {
                pending.append(&mut vertex.inputs);
            }
        }
    }
}

/// One output of an op.
#[derive(Debug, Clone)]
pub struct Output {
    vertex: Arc<Vertex>,
    index: i64,
}

/// Describes an op: the progress name, the instruction and the capabilities it needs.
#[derive(Debug, Clone, Default)]
pub struct OpInfo {
    pub description: BTreeMap<String, String>,
    pub caps: Vec<&'static str>,
    pub lines: Vec<(i32, i32)>,
}

impl OpInfo {
    pub fn named(name: impl Into<String>) -> Self {
        let mut info = OpInfo::default();
        info.description.insert("llb.customname".into(), name.into());
        info
    }
}

/// An op's bytes as Go marshals them: the plain fields in tag order, then the oneof. prost
/// writes a oneof at its tag's position instead, and `Op`'s oneof (tags 2-7) sits between
/// `inputs` (1) and `platform` (10), so `Op` is written field by field. (In every other LLB
/// message the oneof has the highest tags, where both put it.)
pub fn encode_op(op: &pb::Op) -> Vec<u8> {
    use prost::encoding::message;
    let mut buf = Vec::with_capacity(op.encoded_len());
    for input in &op.inputs {
        message::encode(1, input, &mut buf);
    }
    if let Some(platform) = &op.platform {
        message::encode(10, platform, &mut buf);
    }
    if let Some(constraints) = &op.constraints {
        message::encode(11, constraints, &mut buf);
    }
    if let Some(payload) = &op.op {
        payload.encode(&mut buf);
    }
    buf
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Output {
    /// Creates the op `op` (its `inputs` are filled from `inputs`) and returns its output
    /// `index`.
    pub fn new(mut op: pb::Op, inputs: Vec<Output>, info: OpInfo, index: i64) -> Output {
        op.inputs = inputs.iter().map(|i| pb::Input { digest: i.digest().to_string(), index: i.index }).collect();
        let bytes = encode_op(&op);
        let digest = sha256_digest(&bytes);
        let metadata = pb::OpMetadata {
            description: info.description,
            caps: info.caps.into_iter().map(|c| (c.to_string(), true)).collect(),
            ..Default::default()
        };
        Output { vertex: Arc::new(Vertex { bytes, digest, inputs, metadata, lines: info.lines }), index }
    }

    /// The same op, listed in a definition after its inputs visited in `order` instead of
    /// the op's input order (Go's FileOp visits the base, then the sources from the last
    /// action back to the first).
    pub fn visiting(self, order: Vec<Output>) -> Output {
        let mut vertex = Arc::try_unwrap(self.vertex).expect("called on a new output");
        vertex.inputs = order;
        Output { vertex: Arc::new(vertex), index: self.index }
    }

    /// Another output of the same op.
    pub fn with_index(&self, index: i64) -> Output {
        Output { vertex: self.vertex.clone(), index }
    }

    pub fn digest(&self) -> &str {
        &self.vertex.digest
    }

    pub fn index(&self) -> i64 {
        self.index
    }

    /// The op's encoded bytes.
    pub fn op_bytes(&self) -> &[u8] {
        &self.vertex.bytes
    }

    pub fn same_op(&self, other: &Output) -> bool {
        Arc::ptr_eq(&self.vertex, &other.vertex) || self.vertex.digest == other.vertex.digest
    }
}

/// Deduplicates `outputs` by op and index, keeping the first occurrence's position; returns
/// the unique list and, for each given output, its position in it.
pub fn dedup_inputs(outputs: &[Output]) -> (Vec<Output>, Vec<i64>) {
    let mut unique: Vec<Output> = Vec::new();
    let positions = outputs
        .iter()
        .map(|o| match unique.iter().position(|u| u.same_op(o) && u.index == o.index) {
            Some(at) => at as i64,
            None => {
                unique.push(o.clone());
                unique.len() as i64 - 1
            }
        })
        .collect();
    (unique, positions)
}

/// The `pb.Definition` computing `result`: every op it needs, inputs first (depth-first,
/// inputs in order, as Go's `llb.State.Marshal`), then the terminal op naming the result.
/// `source` is the Dockerfile (name and bytes) for the source map.
pub fn definition(result: &Output, source: Option<(&str, &[u8])>) -> pb::Definition {
    let mut def = pb::Definition::default();
    let mut seen = HashSet::new();
    let mut locations = BTreeMap::new();
    visit(&result.vertex, &mut seen, &mut def, &mut locations);
    let terminal = pb::Op {
        inputs: vec![pb::Input { digest: result.digest().to_string(), index: result.index }],
        ..Default::default()
    };
    let terminal_bytes = encode_op(&terminal);
    let caps = ["constraints", "meta.description", "platform"].map(|c| (c.to_string(), true)).into();
    def.metadata.insert(sha256_digest(&terminal_bytes), pb::OpMetadata { caps, ..Default::default() });
    def.def.push(terminal_bytes);
    if let Some((filename, data)) = source {
        def.source = Some(pb::Source {
            locations,
            infos: vec![pb::SourceInfo {
                filename: filename.into(),
                data: data.to_vec(),
                language: "Dockerfile".into(),
                ..Default::default()
            }],
        });
    }
    def
}

/// Lists `root` and every vertex it depends on, each after its inputs (depth-first, inputs
/// in order), with an explicit stack: the graph is as deep as the Dockerfile is long.
fn visit(
    root: &Arc<Vertex>,
    seen: &mut HashSet<String>,
    def: &mut pb::Definition,
    locations: &mut BTreeMap<String, pb::Locations>,
) {
    if !seen.insert(root.digest.clone()) {
        return;
    }
    // Each entry is a vertex and how many of its inputs have been visited.
    let mut stack: Vec<(&Arc<Vertex>, usize)> = vec![(root, 0)];
    while let Some((vertex, next)) = stack.last_mut() {
        let vertex: &Arc<Vertex> = vertex;
        if let Some(input) = vertex.inputs.get(*next) {
            *next += 1;
            if seen.insert(input.vertex.digest.clone()) {
                stack.push((&input.vertex, 0));
            }
            continue;
        }
        stack.pop();
        list(vertex, def, locations);
    }
}

/// Adds `vertex` to the definition, with its metadata and source lines.
fn list(vertex: &Vertex, def: &mut pb::Definition, locations: &mut BTreeMap<String, pb::Locations>) {
    def.def.push(vertex.bytes.clone());
    def.metadata.insert(vertex.digest.clone(), vertex.metadata.clone());
    let ranges = vertex.lines.iter().map(|&(start, end)| pb::Range {
        start: Some(pb::Position { line: start, character: 0 }),
        end: Some(pb::Position { line: end, character: 0 }),
    });
    let location = pb::Location { source_index: 0, ranges: ranges.collect() };
    let entry = locations.entry(vertex.digest.clone()).or_default();
    if !location.ranges.is_empty() {
        entry.locations.push(location);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oneof_is_written_after_the_plain_fields_as_go_does() {
        let op = pb::Op {
            inputs: vec![pb::Input { digest: "sha256:x".into(), index: 0 }],
            op: Some(pb::op::Op::Source(pb::SourceOp { identifier: "docker-image://a".into(), ..Default::default() })),
            platform: Some(pb::Platform { os: "linux".into(), ..Default::default() }),
            constraints: Some(Default::default()),
        };
        let bytes = encode_op(&op);
        // Field keys in order: 1 (0x0a), 10 (0x52), 11 (0x5a), then 3 (0x1a).
        let keys: Vec<u8> = [0x0a, 0x52, 0x5a, 0x1a].into();
        let positions: Vec<usize> = keys.iter().map(|k| bytes.iter().position(|b| b == k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{bytes:02x?}");
        assert_eq!(pb::Op::decode(&*bytes).unwrap(), op);
    }
}
