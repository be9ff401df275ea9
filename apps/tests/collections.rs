//! Folders as collections, with the real binary on 127.0.0.1: `p2p share FOLDER` prints one
//! ticket for the folder and `p2p get TICKET` recreates its exact tree (nested folders, two
//! files of one name, an empty file); `ls` marks folders; `get PEER FOLDER` and `get PEER ID`
//! of a folder's entry fetch it too; a stopped folder download resumes where it stopped;
//! a folder changed since its ticket was made is refused with the reason; the menu's `c`
//! fetches a folder.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

const MIB: usize = 1024 * 1024;

/// The tree shared in most tests: paths below the folder and their bytes.
fn sample_tree() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a.txt", b"top a".to_vec()),
        ("empty.txt", Vec::new()),
        ("sub/a.txt", b"the other a, one folder down".to_vec()),
        ("sub/deeper/b.bin", random_bytes(300_000, 7)),
        ("sub2/a.txt", random_bytes(70_000, 8)),
    ]
}

/// Writes `files` below `dir`.
fn write_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (path, bytes) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// Every file below `dir` (hidden ones too: a leftover partial shows), by relative path.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts that `dir` holds exactly `files`.
fn assert_tree(dir: &Path, files: &[(&str, Vec<u8>)]) {
    let got = read_tree(dir);
    let want: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, b)| (p.to_string(), b.clone()))
        .collect();
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "the paths in {}", dir.display());
    for (path, bytes) in &want {
        assert!(got[path] == *bytes, "{path} differs in {}", dir.display());
    }
}

/// The JSON lines a `get --json` printed on stdout.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `p2p share FOLDER --name NAME` of the folder `rel` of the net's folder; returns the
/// process and its first ticket (the folder's), once printed.
fn share(net: &Net, rel: &str, name: &str) -> (Proc, String) {
    let folder = net.path(rel);
    let folder = folder.to_str().unwrap();
    let mut sharer = net
        .cmd(&["share", folder, "--name", name, "--listen", "127.0.0.1:0"])
        .spawn();
    let header = sharer.wait_for("the whole folder:");
    assert!(header.starts_with(&format!("{rel}/ (")), "{header}");
    let line = sharer.wait_for("p2p get p2p1");
    let ticket = line.split_whitespace().last().unwrap().to_string();
    (sharer, ticket)
}

#[test]
fn a_folder_ticket_recreates_the_exact_tree() {
    let net = Net::start();
    let files = sample_tree();
    write_tree(&net.path("photos"), &files);
    let (_sharer, ticket) = share(&net, "photos", "sharer");

    // The ticket names the tracker and the folder: nothing else is needed.
    let out = run(net.dir(), &["get", &ticket, "--out", "got", "--json"]);
    let lines = json_lines(&out);
    assert_tree(&net.path("got/photos"), &files);
    let summary = lines.last().unwrap();
    assert_eq!(
        summary["files"].as_u64(),
        Some(files.len() as u64),
        "{summary}"
    );
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(summary["size"].as_u64(), Some(total as u64));
    assert!(summary["collection"]
        .as_str()
        .unwrap()
        .starts_with("blake3:"));

    // Again: every file is there already; nothing is fetched, nothing changes.
    let again = json_lines(&run(net.dir(), &["get", &ticket, "--out", "got", "--json"]));
    let present = again
        .iter()
        .filter(|l| l["already_present"] == true)
        .count();
    assert_eq!(present, files.len(), "{again:?}");
    assert_tree(&net.path("got/photos"), &files);
}

#[test]
fn a_folder_changed_since_its_ticket_is_refused_saying_so() {
    let net = Net::start();
    write_tree(&net.path("photos"), &sample_tree());
    let (_sharer, ticket) = share(&net, "photos", "sharer");
    // Another size: the sharer's next scan sees the change whatever the clock's resolution.
    std::fs::write(net.path("photos/sub/a.txt"), b"changed after the ticket").unwrap();
    let out = run(net.dir(), &["get", &ticket, "--out", "got"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed since the ticket was made"),
        "{}",
        stderr(&out)
    );
    // And once the sharer has rescanned and announced the new folder, the old ticket's
    // holder is gone: the same reason.
    let ls = net.ls("sharer").run();
    assert!(ls.status.success(), "{}", stderr(&ls));
    let out = run(net.dir(), &["get", &ticket, "--out", "got"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed since the ticket was made")
            || stderr(&out).contains("changed it since"),
        "{}",
        stderr(&out)
    );
    assert!(!net.path("got/photos/sub/a.txt").exists());
}

/// A seeder `s` sharing [`sample_tree`] below `pics/` (and a file beside it).
fn seeder_with_pics() -> Net {
    let mut net = Net::start();
    let mut seeder = net.seeder("s", "udp").file("beside.txt", b"not in pics");
    for (path, bytes) in sample_tree() {
        seeder = seeder.file(&format!("pics/{path}"), &bytes);
    }
    seeder.start();
    net
}

fn pics_tree(below: &str) -> Vec<(&'static str, Vec<u8>)> {
    sample_tree()
        .into_iter()
        .filter_map(|(p, b)| {
            let rest = p.strip_prefix(below)?;
            Some((&p[p.len() - rest.len()..], b))
        })
        .collect()
}

#[test]
fn ls_marks_folders_and_get_fetches_them_by_path_id_and_hash() {
    let net = seeder_with_pics();
    let listing = net.ls("s").run_json();
    let entries = listing.as_array().unwrap();
    let folder = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {listing}"))
            .clone()
    };
    let pics = folder("pics/");
    assert_eq!(pics["collection"], true, "{pics}");
    assert_eq!(pics["files"].as_u64(), Some(5), "{pics}");
    let sub = folder("pics/sub/");
    assert_eq!(
        (sub["collection"].as_bool(), sub["files"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(folder("pics/a.txt")["collection"], false);
    let plain = stdout(&net.ls("s").run());
    let line = plain
        .lines()
        .find(|l| l.contains("share/pics/sub/ "))
        .unwrap();
    assert!(line.contains("(folder, 2 files, "), "{line}");

    // By path, as before collections.
    let out = net.get("s", "pics").out("by-path").run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_tree(&net.path("by-path/pics"), &sample_tree());
    // By the folder's ID: the same tree.
    let id = sub["id"].as_str().unwrap();
    let lines = json_lines(&net.get("s", id).out("by-id").json().run());
    assert_tree(&net.path("by-id/sub"), &pics_tree("sub/"));
    let hash = format!("blake3:{}", sub["hash"].as_str().unwrap());
    assert_eq!(lines.last().unwrap()["collection"], hash.as_str());
    // By its hash, from whoever has it.
    let out = net.cmd(&["get", &hash]).out("by-hash").run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_tree(&net.path("by-hash/sub"), &pics_tree("sub/"));
    // The whole share: `/`, saved under the share's name.
    let out = net.get("s", "/").out("whole").run();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut whole: Vec<(String, Vec<u8>)> = sample_tree()
        .into_iter()
        .map(|(p, b)| (format!("pics/{p}"), b))
        .collect();
    whole.push(("beside.txt".into(), b"not in pics".to_vec()));
    let whole: Vec<(&str, Vec<u8>)> = whole.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    assert_tree(&net.path("whole/share"), &whole);
}

#[test]
fn a_stopped_folder_download_resumes_where_it_stopped() {
    let mut net = Net::start();
    let big = random_bytes(8 * MIB + 3, 9);
    let files = vec![
        ("a.txt", b"first".to_vec()),
        ("m/big.bin", big),
        ("z.txt", b"last".to_vec()),
    ];
    let mut seeder = net.seeder("s", "udp").args(&["--max-upload-rate", "2MiB"]);
    for (path, bytes) in &files {
        seeder = seeder.file(&format!("tree/{path}"), bytes);
    }
    seeder.start();
    let get = net.get("s", "tree").out("out").json();
    let mut first = get.spawn();
    first.wait_checkpoint(1);
    first.interrupt();
    let (status, output) = first.wait_output();
    assert_eq!(status.code(), Some(3), "{output}");
    let out = net.path("out/tree");
    assert!(out.join("a.txt").exists(), "the first file was finished");
    assert!(hidden(&out.join("m"), "big.bin", ".p2p-part").exists());
    assert!(!out.join("m/big.bin").exists() && !out.join("z.txt").exists());

    let lines = json_lines(&get.run());
    let by_name = |name: &str| {
        lines
            .iter()
            .find(|l| l["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
    };
    assert_eq!(by_name("a.txt")["already_present"], true);
    let resumed = by_name("big.bin")["resumed_from"].as_u64().unwrap();
    assert!(resumed > 0, "{:?}", by_name("big.bin"));
    assert_eq!(by_name("z.txt")["already_present"], false);
    assert_tree(&out, &files);
}

#[test]
fn the_menu_fetches_a_folder_by_its_id() {
    let net = seeder_with_pics();
    let listing = net.ls("s").run_json();
    let sub = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "pics/sub/")
        .unwrap()
        .clone();
    let mut menu = net.menu().name("m").share("mine").downloads("dl").spawn();
    menu.wait_for("q                  : quit");
    menu.send(&format!("c s {}", sub["id"].as_str().unwrap()));
    menu.wait_for("Downloading pics/sub/ (folder 2 files");
    let line = menu.wait_for("Saved folder");
    assert!(line.contains("2 files"), "{line}");
    assert_tree(&net.path("dl/sub"), &pics_tree("sub/"));
    menu.send("q");
}
