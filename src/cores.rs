//! `--cores`: which CPUs each role's threads run on, e.g.
//! `net=0-1,recovery=2-3,seq=15,exec=4-14`, and the defaults for machines of 2 to 128 cores.

use std::fmt;

/// CPUs per role; an empty list leaves that role's threads unpinned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CoreMap {
    /// Network threads, one per listed CPU.
    pub net: Vec<usize>,
    /// Sender-recovery workers, one per listed CPU.
    pub recovery: Vec<usize>,
    /// The sequencer thread (first CPU listed). It also appends to the write-ahead log and
    /// commits state, so `commit=` names the same thread.
    pub seq: Option<usize>,
    /// Block-STM workers, one per listed CPU.
    pub exec: Vec<usize>,
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(['+', ';']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| format!("bad CPU number in `{part}`"))?,
                    b.trim().parse().map_err(|_| format!("bad CPU number in `{part}`"))?,
                );
                if a > b || b - a > 4096 {
                    return Err(format!("bad CPU range `{part}`"));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| format!("bad CPU number `{part}`"))?),
        }
    }
    Ok(out)
}

impl CoreMap {
    /// Parses `role=list,...` where a list is `3`, `0-7` or `0-3+8-11`; roles are `net`,
    /// `recovery`, `seq`, `commit` (the sequencer thread commits) and `exec`. Roles not named
    /// keep their defaults from `defaults`.
    pub(crate) fn parse(spec: &str, defaults: CoreMap, cpus: usize) -> Result<Self, String> {
        let mut map = defaults;
        let mut seq_given: Option<usize> = None;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (role, list) =
                item.split_once('=').ok_or_else(|| format!("`{item}` is not role=cpus"))?;
            let list = parse_list(list)?;
            if let Some(bad) = list.iter().find(|c| **c >= cpus) {
                return Err(format!("CPU {bad} does not exist (this machine has {cpus})"));
            }
            match role.trim() {
                "net" => map.net = list,
                "recovery" => map.recovery = list,
                "exec" => map.exec = list,
                "seq" | "commit" => {
                    let first = list.first().copied();
                    if let (Some(a), Some(b)) = (seq_given, first) {
                        if a != b {
                            return Err(format!(
                                "seq={a} and commit={b} differ, but the sequencer thread commits: give one CPU"
                            ));
                        }
                    }
                    seq_given = first;
                    map.seq = first;
                }
                other => {
                    return Err(format!(
                        "unknown role `{other}` (net, recovery, seq, commit, exec)"
                    ))
                }
            }
        }
        Ok(map)
    }

    /// The layout for a machine with `cpus` CPUs: below four, nothing is pinned (the roles share
    /// the cores with the clients on a dev machine). From four up: the sequencer gets the last
    /// CPU, an eighth of the CPUs (at least one) run network threads, a quarter run sender
    /// recovery, and execution gets the rest.
    pub(crate) fn default_for(cpus: usize) -> Self {
        if cpus < 4 {
            return CoreMap::default();
        }
        let net = (cpus / 8).max(1);
        let recovery = (cpus / 4).max(1);
        let seq = cpus - 1;
        let exec_start = net + recovery;
        let exec: Vec<usize> = (exec_start..seq).collect();
        CoreMap {
            net: (0..net).collect(),
            recovery: (net..exec_start).collect(),
            seq: Some(seq),
            exec: if exec.is_empty() { vec![seq] } else { exec },
        }
    }
}

fn show(list: &[usize]) -> String {
    if list.is_empty() {
        return "any".into();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let mut j = i;
        while j + 1 < list.len() && list[j + 1] == list[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { list[i].to_string() } else { format!("{}-{}", list[i], list[j]) });
        i = j + 1;
    }
    parts.join("+")
}

impl fmt::Display for CoreMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "net={} recovery={} seq={} exec={}",
            show(&self.net),
            show(&self.recovery),
            self.seq.map_or("any".into(), |c| c.to_string()),
            show(&self.exec)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_example() {
        let m = CoreMap::parse("net=0-1,seq=1,exec=0-1,commit=1", CoreMap::default(), 2).unwrap();
        assert_eq!(m.net, vec![0, 1]);
        assert_eq!(m.seq, Some(1));
        assert_eq!(m.exec, vec![0, 1]);
        assert_eq!(m.to_string(), "net=0-1 recovery=any seq=1 exec=0-1");
        assert!(CoreMap::parse("net=0-1,seq=1,commit=0", CoreMap::default(), 2).is_err());
        assert!(CoreMap::parse("net=9", CoreMap::default(), 2).is_err());
        assert!(CoreMap::parse("gpu=0", CoreMap::default(), 2).is_err());
        assert!(CoreMap::parse("net", CoreMap::default(), 2).is_err());
        assert_eq!(
            CoreMap::parse("exec=0-3+8", CoreMap::default(), 16).unwrap().exec,
            vec![0, 1, 2, 3, 8]
        );
    }

    #[test]
    fn defaults_cover_every_cpu_once_from_four_up() {
        assert_eq!(CoreMap::default_for(2), CoreMap::default());
        for cpus in [4, 8, 16, 64, 128] {
            let m = CoreMap::default_for(cpus);
            let mut all: Vec<usize> =
                m.net.iter().chain(&m.recovery).chain(&m.exec).copied().collect();
            all.push(m.seq.unwrap());
            all.sort();
            all.dedup();
            assert_eq!(all, (0..cpus).collect::<Vec<_>>(), "{cpus}: {m}");
        }
        assert_eq!(CoreMap::default_for(16).to_string(), "net=0-1 recovery=2-5 seq=15 exec=6-14");
    }
}
