//! The lab without any validator: proves that the lab works and that the forged ADD_ADDRs are
//! real, i.e. they reach the server's TCP stack, which rejects them only for their HMAC.
//! The validator e2e test (`e2e_add_addr.rs`) contrasts with these numbers.
//!
//! Root only; run with `cargo test -p mptcp-tests --release -- --test-threads=1`.

use std::{
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
};

use mptcp_tests::{
    counters::mib,
    lab::{Lab, PATHS},
    scenario::{self, Outcome, Scenario},
    tools::{gate, Tools},
};

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

fn ready(test: &str) -> bool {
    gate(test, &tools().missing())
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn lab_is_configured_and_removed_on_drop() {
    if !ready("lab_is_configured_and_removed_on_drop") {
        return;
    }
    let lab = Lab::new().expect("building the lab");
    let names = [lab.client.name().to_owned(), lab.server.name().to_owned()];
    assert!(names.iter().all(|n| netns_exists(n)));

    for path in PATHS {
        let client = lab
            .client
            .ip(&["-4", "addr", "show", "dev", path.client_iface])
            .unwrap();
        assert!(
            client.contains(&format!("{}/24", path.client_addr)),
            "{client}"
        );
        let server = lab
            .server
            .ip(&["-4", "addr", "show", "dev", path.server_iface])
            .unwrap();
        assert!(
            server.contains(&format!("{}/24", path.server_addr)),
            "{server}"
        );
        let neigh = lab
            .client
            .ip(&["neigh", "show", "dev", path.client_iface])
            .unwrap();
        assert!(
            neigh.contains("PERMANENT") && neigh.contains(path.server_mac),
            "{neigh}"
        );
    }
    for ns in [&lab.client, &lab.server] {
        let limits = ns.ip(&["mptcp", "limits", "show"]).unwrap();
        assert!(
            limits.contains("add_addr_accepted 4") && limits.contains("subflows 4"),
            "{limits}"
        );
        assert_eq!(
            ns.run(&["sysctl", "-n", "net.mptcp.enabled"])
                .unwrap()
                .trim(),
            "1"
        );
    }
    let endpoints = lab.client.ip(&["mptcp", "endpoint", "show"]).unwrap();
    assert!(
        endpoints.contains("198.18.2.1") && endpoints.contains("signal"),
        "{endpoints}"
    );

    let counters = lab.server.counters().expect("reading counters");
    for name in mib::ALL {
        assert!(counters.contains(name), "the kernel has no counter {name}");
    }

    drop(lab);
    for n in &names {
        assert!(!netns_exists(n), "namespace {n} survived the drop");
    }
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !ready("namespaces_are_removed_when_a_test_panics") {
        return;
    }
    let names = Arc::new(Mutex::new(Vec::new()));
    let stray = Arc::new(Mutex::new(None));
    let (seen, stray_inside) = (Arc::clone(&names), Arc::clone(&stray));
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::new().expect("building the lab");
        seen.lock()
            .unwrap()
            .extend([lab.client.name().to_owned(), lab.server.name().to_owned()]);
        // A process nobody tracks would keep the namespace (and its veths) alive after
        // `ip netns del`: teardown must kill it.
        let child = Command::new("ip")
            .args(["netns", "exec", lab.server.name(), "sleep", "60"])
            .spawn()
            .unwrap();
        *stray_inside.lock().unwrap() = Some(child);
        panic!("deliberate panic inside a lab");
    });
    assert!(result.is_err());
    let names = names.lock().unwrap();
    assert_eq!(names.len(), 2);
    for n in names.iter() {
        assert!(!netns_exists(n), "namespace {n} survived the panic");
    }
    let mut child = stray
        .lock()
        .unwrap()
        .take()
        .expect("the stray process was started");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the stray process was killed, not left to finish: {status}"
    );
}

fn summary(o: &Outcome) -> String {
    format!(
        "genuine phase: {}\nforged phase: {}\ncontrol phase: {}\nforger: {}\nforged: {}\n\
         client: {}\ncaptures:\n{}",
        o.genuine_changes(),
        o.forged_changes(),
        o.control_changes(),
        o.forger_state,
        o.forged.detail,
        o.client_report.mptcp_info,
        o.capture_summary(),
    )
}

#[test]
fn genuine_add_addr_is_accepted_and_forged_ones_reach_the_stack() {
    if !ready("genuine_add_addr_is_accepted_and_forged_ones_reach_the_stack") {
        return;
    }
    let lab = Lab::new().expect("building the lab");
    let sc = Scenario::default();
    let k = i128::from(sc.forged);
    let o = scenario::run(&lab, &tools(), &sc).expect("running the scenario");
    let why = summary(&o);
    eprintln!("{why}");

    // Genuine traffic: MPTCP, the client's ADD_ADDR accepted and echoed, a second subflow, all
    // bytes, a complete capture.
    o.assert_genuine_traffic(&why);
    assert!(
        o.client
            .end
            .delta(&o.client.start, mib::MP_CAPABLE_SYNACK_RX)
            >= 1,
        "not MPTCP\n{why}"
    );
    assert!(
        o.client.end.delta(&o.client.start, mib::ECHO_ADD) >= 1,
        "no echo for the genuine ADD_ADDR\n{why}"
    );

    // Forged, wrong HMAC: they were sent, tcpdump on the server saw every one, the TCP stack
    // processed every one (InSegs and the slow-path pure-ACK count rose by K, PAWS dropped
    // none), and MPTCP rejected them on the HMAC alone: no ADD_ADDR accepted. Linux 6.18 has no
    // counter for an ADD_ADDR HMAC failure (add_addr_hmac_valid() false = option ignored), so
    // the evidence is the counters above plus the positive control below.
    assert_eq!(i128::from(o.forged.sent), k, "{why}");
    assert_eq!(
        o.forged_seen_by_server(),
        usize::try_from(k).unwrap(),
        "tcpdump on the server\n{why}"
    );
    assert!(
        o.forged_delta(mib::TCP_IN_SEGS) >= k,
        "forged segments did not reach TCP\n{why}"
    );
    assert!(
        o.forged_delta(mib::TCP_PURE_ACKS) >= k,
        "forged ACKs not processed\n{why}"
    );
    assert_eq!(
        o.forged_delta(mib::PAWS_ESTAB),
        0,
        "forged TS rejected by PAWS\n{why}"
    );
    assert_eq!(
        o.forged_delta(mib::ADD_ADDR),
        0,
        "a forged ADD_ADDR was accepted\n{why}"
    );

    // Positive control: the same framing with the right HMAC (keys sniffed from the
    // handshake) is accepted and echoed, so the forged ones were rejected only for their HMAC.
    let control = o.control.as_ref().expect("the scenario sends a control");
    assert_eq!(control.sent, 1);
    assert_eq!(o.control_seen_by_server(), 1, "{why}");
    assert_eq!(
        o.control_delta(mib::ADD_ADDR),
        1,
        "control ADD_ADDR not accepted\n{why}"
    );
    assert_eq!(
        o.control_delta(mib::ECHO_ADD_TX),
        1,
        "control ADD_ADDR not echoed\n{why}"
    );

    // The connection survived the forgery.
    assert!(o.client_report.mptcp_info.starts_with("subflows="), "{why}");
}
