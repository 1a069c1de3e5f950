//! The Admin service end to end: the `mailroom` CLI and raw gRPC clients
//! against the real stack, on both stores.

use mailroom_rpc::admin as pb;
use std::time::Duration;

use mailroom_tests::{
    Backend, Running, SmtpClient, admin_client, cli, inbox_id, open_store, start, wait_for,
};
use tonic::Code;

mailroom_tests::on_both!(
    cli_manages_domains_users_and_aliases,
    errors_have_the_promised_grpc_codes,
    postmaster_goes_where_configured
);

async fn cli_manages_domains_users_and_aliases(r: &Running) {
    let dir = r.data_dir.path().to_str().unwrap();
    // The CLI finds the token in the data directory by itself.
    let run = |args: Vec<&'static str>, stdin: &'static str| {
        let mut full = vec!["--data-dir", dir, "--admin-url", r.admin_url.as_str()];
        full.extend(args);
        let full: Vec<String> = full.into_iter().map(String::from).collect();
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            cli(&refs, stdin).await
        }
    };
    assert_eq!(
        run(vec!["domain", "add", "Example.Test"], "")
            .await
            .unwrap(),
        "domain example.test added\n\
         postmaster@example.test goes to the first account created in it \
         (another address: mailroom domain postmaster example.test <address>)\n"
    );
    assert_eq!(
        run(vec!["domain", "add", "bücher.example"], "")
            .await
            .unwrap()
            .lines()
            .next(),
        Some("domain xn--bcher-kva.example added")
    );
    assert_eq!(
        run(vec!["domain", "list"], "").await.unwrap(),
        "example.test\nxn--bcher-kva.example (bücher.example)\n"
    );
    assert_eq!(
        run(
            vec!["user", "add", "Alice@example.test", "--quota", "1G"],
            "s3cret passphrase\n"
        )
        .await
        .unwrap(),
        "account alice@example.test created\n"
    );
    let err = run(
        vec!["user", "add", "alice@EXAMPLE.test"],
        "another passphrase\n",
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("exists already") && err.contains("AlreadyExists"),
        "{err}"
    );
    let err = run(vec!["user", "add", "bob@example.test"], "")
        .await
        .unwrap_err();
    assert!(err.contains("no password"), "{err}");

    let list = run(vec!["user", "list"], "").await.unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("ADDRESS"));
    assert!(
        lines[1].starts_with("alice@example.test")
            && lines[1].contains("1.0 GiB")
            && lines[1].ends_with("active"),
        "{list}"
    );
    let disabled = run(vec!["user", "disable", "alice@example.test"], "")
        .await
        .unwrap();
    assert!(disabled.trim_end().ends_with("disabled"), "{disabled}");
    run(vec!["user", "enable", "alice@example.test"], "")
        .await
        .unwrap();
    let quota = run(vec!["user", "quota", "alice@example.test", "unlimited"], "")
        .await
        .unwrap();
    assert!(quota.contains("unlimited"), "{quota}");
    run(
        vec!["user", "passwd", "alice@example.test"],
        "a fresh passphrase\n",
    )
    .await
    .unwrap();

    assert_eq!(
        run(
            vec![
                "alias",
                "add",
                "postmaster@example.test",
                "alice@example.test"
            ],
            ""
        )
        .await
        .unwrap(),
        "alias postmaster@example.test -> alice@example.test added\n"
    );
    run(
        vec!["alias", "add", "@example.test", "alice@example.test"],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        run(vec!["alias", "list", "--domain", "example.test"], "")
            .await
            .unwrap(),
        "@example.test -> alice@example.test\npostmaster@example.test -> alice@example.test\n"
    );
    let err = run(vec!["domain", "delete", "example.test"], "")
        .await
        .unwrap_err();
    assert!(err.contains("FailedPrecondition"), "{err}");
    run(
        vec!["alias", "delete", "@example.test", "alice@example.test"],
        "",
    )
    .await
    .unwrap();
    run(
        vec![
            "alias",
            "delete",
            "postmaster@example.test",
            "alice@example.test",
        ],
        "",
    )
    .await
    .unwrap();
    run(vec!["user", "delete", "alice@example.test"], "")
        .await
        .unwrap();
    run(vec!["domain", "delete", "example.test"], "")
        .await
        .unwrap();
    assert_eq!(
        run(vec!["domain", "list"], "").await.unwrap(),
        "xn--bcher-kva.example (bücher.example)\n"
    );
}

/// Sends a message to `rcpt` on port 25; the reply to RCPT, then (if it
/// was accepted) the final reply.
async fn send_to(r: &Running, rcpt: &str, subject: &str) -> Vec<u16> {
    let (mut c, _) = SmtpClient::connect(r.stack.addr("smtp").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("MAIL FROM:<x@sender.test>").await.0, 250);
    let mut codes = vec![c.cmd(&format!("RCPT TO:<{rcpt}>")).await.0];
    if codes[0] == 250 {
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send(format!("From: x@sender.test\r\nSubject: {subject}\r\n\r\nhi\r\n.\r\n").as_bytes())
            .await;
        codes.push(c.reply().await.0);
    }
    c.cmd("QUIT").await;
    codes
}

/// RFC 5321 §4.5.1 through SMTP: postmaster@ goes to an alias where one
/// exists, else to the address set with `mailroom domain postmaster`, else
/// to the domain's first account (named by `domain add`).
async fn postmaster_goes_where_configured(r: &Running) {
    let dir = r.data_dir.path().to_str().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut full = vec!["--data-dir", dir, "--admin-url", r.admin_url.as_str()];
        full.extend_from_slice(args);
        let full: Vec<String> = full.into_iter().map(String::from).collect();
        let stdin = stdin.to_string();
        async move {
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            cli(&refs, &stdin).await
        }
    };
    let added = run(&["domain", "add", "example.test"], "").await.unwrap();
    assert!(
        added.contains("postmaster@example.test goes to the first account"),
        "{added}"
    );
    let show = ["domain", "postmaster", "example.test"];
    assert!(run(&show, "").await.unwrap().contains("goes nowhere yet"));
    assert_eq!(send_to(r, "postmaster@example.test", "none").await, [550]);

    for user in ["alice@example.test", "bob@example.test"] {
        run(&["user", "add", user], "s3cret passphrase\n")
            .await
            .unwrap();
    }
    assert_eq!(
        run(&show, "").await.unwrap(),
        "postmaster@example.test goes to alice@example.test (the first account) \
         unless an alias covers it\n"
    );
    let set = |to: &'static str| ["domain", "postmaster", "example.test", to];
    assert_eq!(
        run(&set("Bob@Example.Test"), "").await.unwrap(),
        "postmaster@example.test goes to bob@example.test (configured) unless an alias covers it\n"
    );
    assert!(run(&set("postmaster@example.test"), "").await.is_err());
    assert!(
        run(
            &["domain", "postmaster", "nowhere.test", "bob@example.test"],
            ""
        )
        .await
        .unwrap_err()
        .contains("not served")
    );

    let store = open_store(r).await;
    let (alice, bob) = (
        inbox_id(&store, "alice@example.test").await,
        inbox_id(&store, "bob@example.test").await,
    );
    let count = async |mailbox: i64| store.list_messages(mailbox).await.unwrap().len();
    assert_eq!(
        send_to(r, "postmaster@example.test", "to-bob").await,
        [250, 250]
    );
    wait_for(
        "postmaster mail at bob",
        Duration::from_secs(20),
        async || count(bob).await == 1,
    )
    .await;
    assert_eq!(count(alice).await, 0);

    // A configured address elsewhere is followed like an alias target.
    run(
        &["alias", "add", "ops@example.test", "alice@example.test"],
        "",
    )
    .await
    .unwrap();
    run(&set("ops@example.test"), "").await.unwrap();
    assert_eq!(
        send_to(r, "postmaster@example.test", "via-ops").await,
        [250, 250]
    );
    wait_for(
        "postmaster mail at alice",
        Duration::from_secs(20),
        async || count(alice).await == 1,
    )
    .await;

    // An alias wins over the configured address.
    run(
        &["domain", "postmaster", "example.test", "bob@example.test"],
        "",
    )
    .await
    .unwrap();
    run(
        &[
            "alias",
            "add",
            "postmaster@example.test",
            "alice@example.test",
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        send_to(r, "postmaster@example.test", "alias").await,
        [250, 250]
    );
    wait_for(
        "aliased postmaster mail",
        Duration::from_secs(20),
        async || count(alice).await == 2,
    )
    .await;
    assert_eq!(count(bob).await, 1);

    // --default: back to the first account.
    assert!(
        run(&["domain", "postmaster", "example.test", "--default"], "")
            .await
            .unwrap()
            .contains("goes to alice@example.test (the first account)")
    );
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

async fn errors_have_the_promised_grpc_codes(r: &Running) {
    // No token, or a wrong one: UNAUTHENTICATED, and nothing is done.
    for token in [None, Some("x".repeat(64)), Some(format!("{}x", r.token))] {
        let mut c = admin_client(&r.admin_url, token.as_deref()).await;
        let e = c
            .add_domain(pb::AddDomainRequest {
                name: "sneaky.test".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let mut c = admin_client(&r.admin_url, Some(&r.token)).await;
    assert!(
        c.list_domains(pb::ListDomainsRequest {})
            .await
            .unwrap()
            .into_inner()
            .domains
            .is_empty()
    );

    c.add_domain(pb::AddDomainRequest {
        name: "example.test".into(),
    })
    .await
    .unwrap();
    for bad in [
        "",
        "no_underscores.test",
        "localhost",
        "[127.0.0.1]",
        "a..b",
    ] {
        let got = code(
            c.add_domain(pb::AddDomainRequest { name: bad.into() })
                .await,
        );
        assert_eq!(got, Some(Code::InvalidArgument), "domain {bad:?}");
    }
    assert_eq!(
        code(
            c.add_domain(pb::AddDomainRequest {
                name: "EXAMPLE.test".into()
            })
            .await
        ),
        Some(Code::AlreadyExists)
    );
    let create = |address: &str, password: &str| pb::CreateAccountRequest {
        address: address.into(),
        password: password.into(),
        quota_bytes: 0,
    };
    for bad in [
        "nobody",
        "a b@example.test",
        "@example.test",
        "a@b@example.test",
        "x@-bad.test",
    ] {
        let got = code(c.create_account(create(bad, "long enough password")).await);
        assert_eq!(got, Some(Code::InvalidArgument), "address {bad:?}");
    }
    assert_eq!(
        code(c.create_account(create("bob@example.test", "short")).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            c.create_account(create("bob@unknown.test", "long enough password"))
                .await
        ),
        Some(Code::NotFound)
    );
    c.create_account(create("bob@example.test", "long enough password"))
        .await
        .unwrap();
    assert_eq!(
        code(
            c.create_account(create("Bob@Example.Test", "long enough password"))
                .await
        ),
        Some(Code::AlreadyExists)
    );
    assert_eq!(
        code(
            c.set_quota(pb::SetQuotaRequest {
                address: "carol@example.test".into(),
                quota_bytes: 1
            })
            .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            c.add_alias(pb::AddAliasRequest {
                source: "info@elsewhere.test".into(),
                target: "bob@example.test".into()
            })
            .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            c.add_alias(pb::AddAliasRequest {
                source: "info@example.test".into(),
                target: "not an address".into()
            })
            .await
        ),
        Some(Code::InvalidArgument)
    );
    // Nothing half-written: exactly the one good account, with its six mailboxes' worth of existence.
    let accounts = c
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].address, "bob@example.test");
    assert!(
        c.list_aliases(pb::ListAliasesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .aliases
            .is_empty()
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let r = start(Backend::Sqlite).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(r.admin_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mailroom.admin.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["mailroom.admin.v1.Admin", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    r.stack.stop(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_embedded_default_generates_its_token_and_certificate() {
    let r = start(Backend::Sqlite).await.unwrap();
    let dir = r.data_dir.path();
    assert_eq!(r.stack.token_file(), dir.join("admin-token"));
    assert!(r.token.len() >= 32);
    assert!(dir.join("tls/cert.pem").is_file() && dir.join("tls/key.pem").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for secret in ["admin-token", "tls/key.pem"] {
            let mode = std::fs::metadata(dir.join(secret))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{secret} is readable by others");
        }
    }
    let banner = r.stack.banner();
    assert!(
        banner.contains(&format!("admin        {}", r.stack.addr("admin").unwrap())),
        "{banner}"
    );
    assert!(banner.contains("Admin token: "), "{banner}");
    r.stack.stop(std::time::Duration::from_secs(5)).await;
}
