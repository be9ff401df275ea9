//! Splitting lists into pages that each fit one control message.

use serde::Serialize;

use super::{CONTROL_BUDGET, MAX_LIST_ITEMS};

/// Bytes of a page message around its items (envelope, tag, ids, counters), at most.
const PAGE_OVERHEAD: usize = 64 + 256;

/// Splits `items` into pages whose encoded size stays within [`CONTROL_BUDGET`] and whose
/// length stays within [`MAX_LIST_ITEMS`]. Always returns at least one (possibly empty) page.
/// An item too large for any page on its own is left out.
pub fn paginate<T: Serialize>(items: Vec<T>) -> Vec<Vec<T>> {
    let budget = CONTROL_BUDGET - PAGE_OVERHEAD;
    let mut pages = vec![Vec::new()];
    let mut used = 0;
    for item in items {
        let size = rmp_serde::to_vec(&item)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > budget {
            continue;
        }
        let page = pages.last_mut().expect("never empty");
        if used + size > budget || page.len() == MAX_LIST_ITEMS {
            pages.push(Vec::new());
            used = 0;
        }
        pages.last_mut().expect("never empty").push(item);
        used += size;
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BoundedVec, ContentHash, FileId, IndexEntry, Message, RequestId};

    #[test]
    fn pages_fit_the_budget() {
        let items: Vec<IndexEntry> = (0..500)
            .map(|i| IndexEntry {
                id: FileId(i),
                path: format!("some/dir/file-{i:05}.bin"),
                size: u64::MAX,
                hash: ContentHash::of(b"x"),
            })
            .collect();
        let pages = paginate(items.clone());
        assert!(pages.len() > 1);
        let n = pages.len() as u32;
        let mut all = Vec::new();
        for (i, p) in pages.into_iter().enumerate() {
            let msg = Message::IndexPage {
                request: RequestId(u64::MAX),
                page: i as u32,
                pages: n,
                share: "x".repeat(255),
                entries: BoundedVec(p.clone()),
            };
            assert!(msg.encode().len() <= CONTROL_BUDGET);
            all.extend(p);
        }
        assert_eq!(all, items);
    }

    #[test]
    fn empty_list_gives_one_empty_page() {
        assert_eq!(paginate::<u32>(vec![]), vec![Vec::<u32>::new()]);
    }
}
