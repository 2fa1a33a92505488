//! The graph of stages: which stages each one needs (its FROM, `COPY --from`, `RUN
//! --mount=from=`, the ONBUILD triggers it inherits), BuildKit's cycle check, and the order
//! to lower them in. A Dockerfile can chain any number of stages, so every walk here keeps
//! its own stack instead of recursing.

/// Stage `stage` is needed by the instruction at `line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dependency {
    pub stage: usize,
    pub line: usize,
}

/// A cycle: the stage BuildKit names (the first, in file order, that reaches one) and the
/// line of the first instruction on the path into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    pub stage: usize,
    pub line: usize,
}

/// BuildKit's `hasCircularDependency`: stages are tried in file order and the first one a
/// cycle is reachable from is named.
pub fn find_cycle(count: usize, dependencies: impl Fn(usize) -> Vec<Dependency>) -> Option<Cycle> {
    let mut visited = vec![false; count];
    for start in 0..count {
        if visited[start] {
            continue;
        }
        visited[start] = true;
        // Depth-first: each entry is a stage, its dependencies and how many were followed.
        let mut stack = vec![(start, dependencies(start), 0)];
        let mut on_path = vec![false; count];
        on_path[start] = true;
        // The line of the first instruction taken from `start`.
        let mut first_line = 0;
        while let Some((stage, deps, next)) = stack.last_mut() {
            let Some(dep) = deps.get(*next).copied() else {
                on_path[*stage] = false;
                stack.pop();
                continue;
            };
            *next += 1;
            if stack.len() == 1 {
                first_line = dep.line;
            }
            if on_path[dep.stage] {
                return Some(Cycle { stage: start, line: first_line });
            }
            if !visited[dep.stage] {
                visited[dep.stage] = true;
                on_path[dep.stage] = true;
                stack.push((dep.stage, dependencies(dep.stage), 0));
            }
        }
    }
    None
}

/// `target` and the stages it needs, each after those it needs. The graph must have no
/// cycle (see [`find_cycle`]).
pub fn lowering_order(count: usize, target: usize, dependencies: impl Fn(usize) -> Vec<Dependency>) -> Vec<usize> {
    let mut seen = vec![false; count];
    let mut order = Vec::new();
    seen[target] = true;
    let mut stack = vec![(target, dependencies(target), 0)];
    while let Some((stage, deps, next)) = stack.last_mut() {
        let Some(dep) = deps.get(*next).copied() else {
            order.push(*stage);
            stack.pop();
            continue;
        };
        *next += 1;
        if !seen[dep.stage] {
            seen[dep.stage] = true;
            stack.push((dep.stage, dependencies(dep.stage), 0));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(usize, usize, usize)]) -> impl Fn(usize) -> Vec<Dependency> + '_ {
        |from| edges.iter().filter(|e| e.0 == from).map(|&(_, stage, line)| Dependency { stage, line }).collect()
    }

    #[test]
    fn cycles_name_the_first_stage_reaching_them() {
        assert_eq!(find_cycle(3, graph(&[(1, 0, 5), (2, 1, 7)])), None);
        assert_eq!(find_cycle(1, graph(&[(0, 0, 2)])), Some(Cycle { stage: 0, line: 2 }));
        // 0 reaches the cycle 1 <-> 2 through its line 3.
        assert_eq!(find_cycle(3, graph(&[(0, 1, 3), (1, 2, 4), (2, 1, 6)])), Some(Cycle { stage: 0, line: 3 }));
        // A stage reached twice without a cycle (a diamond) is not one.
        assert_eq!(find_cycle(4, graph(&[(0, 1, 1), (0, 2, 2), (1, 3, 3), (2, 3, 4)])), None);
    }

    #[test]
    fn dependencies_come_first_and_once() {
        assert_eq!(lowering_order(4, 0, graph(&[(0, 1, 1), (0, 2, 2), (1, 3, 3), (2, 3, 4)])), [3, 1, 2, 0]);
        assert_eq!(lowering_order(3, 2, graph(&[(1, 0, 1)])), [2]);
    }
}
