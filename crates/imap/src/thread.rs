//! THREAD and UID THREAD (RFC 5256 §3, §4): ORDEREDSUBJECT and REFERENCES.
//!
//! The messages threaded are those the search criteria match
//! ([`crate::search::matching`]); their sent dates, base subjects and
//! Message-ID / In-Reply-To come from the parse cache
//! ([`crate::sort::infos`]), References (not in the cache) from the
//! header of each message, read only for THREAD=REFERENCES.
//!
//! Invariants:
//! * the containers form a forest at every step: a parent link is only
//!   made when it closes no loop (RFC 5256 §2.2 REFERENCES (1)(A)), so a
//!   References chain that points back at itself (a reference loop) threads
//!   as far as it can without one, and every walk up the parents ends;
//! * a Message-ID already taken (a duplicate) or missing gives the message
//!   a container of its own, never shared;
//! * referenced messages that are not in the result become dummy
//!   containers, pruned as §2.2 (4) says: childless dummies go, a dummy's
//!   children move up a level, except at the root where a dummy stays if
//!   it has more than one child;
//! * siblings are ordered by sent date, ties by sequence number; a dummy
//!   sorts as its first child.

use std::collections::HashMap;

use imap_types::core::{Charset, Vec1};
use imap_types::extensions::thread::ThreadingAlgorithm;
use imap_types::search::SearchKey;

use crate::ImapServer;
use crate::session::{Failure, Io, Outcome, Phase, State};
use crate::sort::{Info, Need, infos, matched};

/// Message texts read at a time for References.
const BATCH: usize = 256;

/// A container (RFC 5256 §2.2 / JWZ): a message, or a dummy for a
/// referenced message that is not here.
#[derive(Debug, Default)]
struct Node {
    /// Index into the infos; `None` for a dummy.
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

/// The thread forest, by index into `nodes`.
struct Forest<'a> {
    nodes: Vec<Node>,
    infos: &'a [Info],
}

impl Forest<'_> {
    fn new_node(&mut self, msg: Option<usize>) -> usize {
        self.nodes.push(Node {
            msg,
            ..Node::default()
        });
        self.nodes.len() - 1
    }

    /// Whether `a` is `b` or one of its ancestors.
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        let mut n = Some(b);
        while let Some(x) = n {
            if x == a {
                return true;
            }
            n = self.nodes[x].parent;
        }
        false
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|&c| c != child);
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
    }

    /// (sent date, sequence index) of a container: a dummy's is its first
    /// child's (children sorted first).
    fn key(&self, n: usize) -> (i64, usize) {
        match self.nodes[n].msg {
            Some(m) => (self.infos[m].date, self.infos[m].idx),
            None => self.nodes[n]
                .children
                .first()
                .map_or((i64::MAX, usize::MAX), |&c| self.key(c)),
        }
    }

    /// The message that stands for a container: itself, or a dummy's first child.
    fn subject_info(&self, n: usize) -> Option<&Info> {
        match self.nodes[n].msg {
            Some(m) => Some(&self.infos[m]),
            None => self.nodes[n]
                .children
                .first()
                .and_then(|&c| self.nodes[c].msg)
                .map(|m| &self.infos[m]),
        }
    }

    /// Sorts every set of siblings below `n` (deepest first), then `list`.
    fn sort_all(&mut self, list: &mut [usize]) {
        for &n in list.iter() {
            let mut children = std::mem::take(&mut self.nodes[n].children);
            self.sort_all(&mut children);
            self.nodes[n].children = children;
        }
        list.sort_by_key(|&n| self.key(n));
    }

    /// §2.2 REFERENCES (4): prunes dummies in `list` (root level or not).
    fn prune(&mut self, list: Vec<usize>, root: bool) -> Vec<usize> {
        let mut out = Vec::with_capacity(list.len());
        for n in list {
            let children = std::mem::take(&mut self.nodes[n].children);
            let children = self.prune(children, false);
            for &c in &children {
                self.nodes[c].parent = Some(n);
            }
            self.nodes[n].children = children;
            if self.nodes[n].msg.is_some() {
                out.push(n);
                continue;
            }
            let kids = std::mem::take(&mut self.nodes[n].children);
            if kids.is_empty() {
                continue;
            }
            if root && kids.len() > 1 {
                self.nodes[n].children = kids;
                out.push(n);
            } else {
                for &c in &kids {
                    self.nodes[c].parent = if root { None } else { self.nodes[n].parent };
                }
                out.extend(kids);
            }
        }
        out
    }

    /// Writes the thread-list of `n` (RFC 5256 §4) without its parentheses.
    fn write(&self, n: usize, ids: &dyn Fn(usize) -> u32, out: &mut String) {
        let mut n = n;
        let mut first = true;
        loop {
            let node = &self.nodes[n];
            if let Some(m) = node.msg {
                if !first {
                    out.push(' ');
                }
                out.push_str(&ids(m).to_string());
                first = false;
            }
            match node.children.len() {
                0 => return,
                1 if node.msg.is_some() => n = node.children[0],
                _ => {
                    if !first {
                        out.push(' ');
                    }
                    for &c in &node.children {
                        out.push('(');
                        self.write(c, ids, out);
                        out.push(')');
                    }
                    return;
                }
            }
        }
    }
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §3): messages grouped by base subject,
/// each group a thread whose first message (by sent date) has the others as
/// children; threads ordered by their first message's sent date.
fn ordered_subject(forest: &mut Forest<'_>) -> Vec<usize> {
    let n = forest.infos.len();
    let mut order: Vec<usize> = (0..n).collect();
    let infos = forest.infos;
    order.sort_by(|&a, &b| {
        let (a, b) = (&infos[a], &infos[b]);
        (&a.subject, a.date, a.idx).cmp(&(&b.subject, b.date, b.idx))
    });
    let mut roots = Vec::new();
    let mut current: Option<(usize, &str)> = None;
    for m in order {
        let node = forest.new_node(Some(m));
        match current {
            Some((root, subject)) if subject == infos[m].subject => forest.link(root, node),
            _ => {
                roots.push(node);
                current = Some((node, infos[m].subject.as_str()));
            }
        }
    }
    roots.sort_by_key(|&r| forest.key(r));
    roots
}

/// THREAD=REFERENCES (RFC 5256 §2.2 / §3): `refs[m]` are the msg-ids
/// message `m` refers to (References, else the first of In-Reply-To).
fn references(forest: &mut Forest<'_>, refs: &[Vec<String>]) -> Vec<usize> {
    let infos = forest.infos;
    let mut table: HashMap<String, usize> = HashMap::new();
    // (1) Containers and links.
    for (m, info) in infos.iter().enumerate() {
        let id = info
            .message_id
            .as_deref()
            .and_then(|v| mailroom_mime::msg_ids(v).into_iter().next());
        let node = match id {
            Some(id) => match table.get(&id) {
                Some(&n) if forest.nodes[n].msg.is_none() => {
                    forest.nodes[n].msg = Some(m);
                    n
                }
                // A duplicate Message-ID: a container of its own.
                Some(_) => forest.new_node(Some(m)),
                None => {
                    let n = forest.new_node(Some(m));
                    table.insert(id, n);
                    n
                }
            },
            None => forest.new_node(Some(m)),
        };
        let mut prev: Option<usize> = None;
        for r in &refs[m] {
            let rn = match table.get(r) {
                Some(&n) => n,
                None => {
                    let n = forest.new_node(None);
                    table.insert(r.clone(), n);
                    n
                }
            };
            if let Some(p) = prev
                && forest.nodes[rn].parent.is_none()
                && !forest.is_ancestor(rn, p)
                && !forest.is_ancestor(p, rn)
            {
                forest.link(p, rn);
            }
            prev = Some(rn);
        }
        // (B) The message's parent is its last reference, if no loop.
        match prev {
            Some(p) if !forest.is_ancestor(node, p) => forest.link(p, node),
            Some(_) => {}
            None => forest.unlink(node),
        }
    }
    // (2) The root set.
    let roots: Vec<usize> = (0..forest.nodes.len())
        .filter(|&n| forest.nodes[n].parent.is_none())
        .collect();
    // (3) The id table is no longer needed; (4) prune.
    drop(table);
    let mut roots = forest.prune(roots, true);
    // (5) Sort the root set (dummies by their first child).
    forest.sort_all(&mut roots);
    // (6) Gather by base subject.
    let mut subjects: HashMap<String, usize> = HashMap::new();
    for &r in &roots {
        let Some(info) = forest.subject_info(r) else {
            continue;
        };
        if info.subject.is_empty() {
            continue;
        }
        match subjects.get(&info.subject) {
            None => {
                subjects.insert(info.subject.clone(), r);
            }
            Some(&old) => {
                let old_dummy = forest.nodes[old].msg.is_none();
                let this_dummy = forest.nodes[r].msg.is_none();
                let old_reply = forest.subject_info(old).is_some_and(|i| i.reply);
                if (this_dummy && !old_dummy) || (old_reply && !info.reply && !old_dummy) {
                    subjects.insert(info.subject.clone(), r);
                }
            }
        }
    }
    let mut slots: Vec<Option<usize>> = roots.iter().copied().map(Some).collect();
    for i in 0..slots.len() {
        let Some(r) = slots[i] else { continue };
        let Some(info) = forest.subject_info(r) else {
            continue;
        };
        if info.subject.is_empty() {
            continue;
        }
        let (subject, reply) = (info.subject.clone(), info.reply);
        let Some(&t) = subjects.get(&subject) else {
            continue;
        };
        if t == r {
            continue;
        }
        let t_dummy = forest.nodes[t].msg.is_none();
        let r_dummy = forest.nodes[r].msg.is_none();
        let t_reply = forest.subject_info(t).is_some_and(|i| i.reply);
        if t_dummy && r_dummy {
            for c in std::mem::take(&mut forest.nodes[r].children) {
                forest.nodes[c].parent = None;
                forest.link(t, c);
            }
            slots[i] = None;
        } else if t_dummy || (!t_reply && reply && !r_dummy) {
            forest.link(t, r);
            slots[i] = None;
        } else if r_dummy {
            // Not reached (the table prefers dummies), kept for safety.
            let pos = slots.iter().position(|&s| s == Some(t));
            forest.link(r, t);
            if let Some(p) = pos {
                slots[p] = None;
            }
            subjects.insert(subject, r);
        } else {
            let d = forest.new_node(None);
            let pos = slots.iter().position(|&s| s == Some(t));
            forest.link(d, t);
            forest.link(d, r);
            slots[i] = None;
            if let Some(p) = pos {
                slots[p] = Some(d);
            }
            subjects.insert(subject, d);
        }
    }
    let mut roots: Vec<usize> = slots.into_iter().flatten().collect();
    // (7) Sort all siblings, deepest first.
    forest.sort_all(&mut roots);
    roots
}

/// THREAD and UID THREAD: `* THREAD` with the thread lists.
pub(crate) async fn thread(
    server: &ImapServer,
    io: &mut Io,
    state: &mut State,
    algorithm: ThreadingAlgorithm<'_>,
    charset: Charset<'_>,
    search: Vec1<SearchKey<'_>>,
    uid: bool,
) -> Outcome {
    let by_references = match algorithm {
        ThreadingAlgorithm::OrderedSubject => false,
        ThreadingAlgorithm::References => true,
        ThreadingAlgorithm::Other(other) => {
            return Err(Failure::Bad(format!(
                "unknown threading algorithm {}",
                other.as_ref()
            )));
        }
    };
    let matched = matched(server, io, state, &charset, search).await?;
    let Phase::Selected(sel) = &state.phase else {
        unreachable!("state checked")
    };
    let infos = infos(server, sel, &matched, Need::thread()).await?;
    let mut forest = Forest {
        nodes: Vec::with_capacity(infos.len() * 2),
        infos: &infos,
    };
    let roots = if by_references {
        let mut refs: Vec<Vec<String>> = Vec::with_capacity(infos.len());
        for chunk in infos.chunks(BATCH) {
            let uids: Vec<u32> = chunk.iter().map(|i| sel.messages[i.idx].uid).collect();
            let texts = server.store.message_texts(sel.mailbox.id, &uids).await?;
            for info in chunk {
                let uid = sel.messages[info.idx].uid;
                let text = texts
                    .binary_search_by_key(&uid, |(u, _)| *u)
                    .ok()
                    .map(|p| texts[p].1.as_slice())
                    .unwrap_or_default();
                let from_references = mailroom_mime::field_value(text, "References")
                    .map(|v| mailroom_mime::msg_ids(&v))
                    .unwrap_or_default();
                refs.push(if from_references.is_empty() {
                    info.in_reply_to
                        .as_deref()
                        .and_then(|v| mailroom_mime::msg_ids(v).into_iter().next())
                        .into_iter()
                        .collect()
                } else {
                    from_references
                });
            }
        }
        references(&mut forest, &refs)
    } else {
        ordered_subject(&mut forest)
    };
    let ids = |m: usize| {
        let idx = infos[m].idx;
        if uid {
            sel.messages[idx].uid
        } else {
            idx as u32 + 1
        }
    };
    let mut line = String::from("* THREAD");
    if !roots.is_empty() {
        line.push(' ');
    }
    for r in roots {
        line.push('(');
        forest.write(r, &ids, &mut line);
        line.push(')');
    }
    io.line(&line);
    Ok(format!(
        "OK {}THREAD completed",
        if uid { "UID " } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(idx: usize, date: i64, subject: &str, id: &str) -> Info {
        let (s, reply) = crate::sort::base_subject(subject);
        Info {
            idx,
            date,
            subject: crate::sort::casemap(&s),
            reply,
            message_id: Some(format!("<{id}>").into_bytes()),
            ..Info::default()
        }
    }

    fn run(infos: &[Info], refs: &[&[&str]]) -> String {
        let mut f = Forest {
            nodes: Vec::new(),
            infos,
        };
        let refs: Vec<Vec<String>> = refs
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect();
        let roots = references(&mut f, &refs);
        let mut out = String::new();
        for r in roots {
            out.push('(');
            f.write(r, &|m| infos[m].idx as u32 + 1, &mut out);
            out.push(')');
        }
        out
    }

    #[test]
    fn a_reference_loop_threads_without_hanging() {
        let infos = [
            info(0, 1, "a", "1@x"),
            info(1, 2, "Re: a", "2@x"),
            info(2, 3, "Re: a", "3@x"),
        ];
        // 1 refers to 3, 2 to 1, 3 to 2: a cycle.
        let out = run(&infos, &[&["3@x"], &["1@x"], &["2@x"]]);
        let mut seen: Vec<char> = out.chars().filter(char::is_ascii_digit).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec!['1', '2', '3'], "{out}");
    }

    #[test]
    fn missing_parents_become_dummies_and_siblings_share_one() {
        let infos = [
            info(0, 1, "a", "1@x"),
            info(1, 2, "Re: a", "2@x"),
            info(2, 3, "b", "3@x"),
        ];
        // 1 and 2 both reply to a message that is not there.
        let out = run(&infos, &[&["0@x"], &["0@x"], &[]]);
        assert_eq!(out, "((1)(2))(3)");
        let out = run(&infos, &[&[], &["1@x"], &["0@x", "2@x"]]);
        assert_eq!(out, "(1 2 3)");
    }
}
