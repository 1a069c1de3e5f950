//! The internal gRPC links (Queue, Delivery) are closed to anyone without a
//! credential, each role may do only its own work, and the whole mail path
//! still runs with the services apart, given their credentials the way the
//! compose file gives them; in the embedded default no internal port is
//! open at all.

use std::time::Duration;

use mailroom_rpc::delivery::delivery_client::DeliveryClient;
use mailroom_rpc::delivery::{DeliverRequest, Outcome};
use mailroom_rpc::internal::{AttachCredential, Credential, InternalSecret, Role};
use mailroom_rpc::queue::queue_client::QueueClient;
use mailroom_rpc::queue::{EnqueueRequest, Envelope, Recipient};
use mailroom_tests::{Backend, PASSWORD, Running, SmtpClient, start_with, wait_for, with_accounts};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Presents `credential`, or nothing at all.
#[derive(Clone, Debug)]
struct Maybe(Option<Credential>);

impl tonic::service::Interceptor for Maybe {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.0 {
            Some(c) => AttachCredential(c.clone()).call(request),
            None => Ok(request),
        }
    }
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn queue_client(
    r: &Running,
    credential: Option<Credential>,
) -> QueueClient<InterceptedService<Channel, Maybe>> {
    QueueClient::with_interceptor(
        channel(r.stack.addr("queue").unwrap()).await,
        Maybe(credential),
    )
}

async fn delivery_client(
    r: &Running,
    credential: Option<Credential>,
) -> DeliveryClient<InterceptedService<Channel, Maybe>> {
    DeliveryClient::with_interceptor(
        channel(r.stack.addr("mda").unwrap()).await,
        Maybe(credential),
    )
}

fn enqueue_request(to: &str, authenticated_as: &str) -> EnqueueRequest {
    EnqueueRequest {
        envelope: Some(Envelope {
            sender: "ceo@bigbank.example".into(),
            recipients: vec![Recipient {
                address: to.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        message: b"From: ceo@bigbank.example\r\nSubject: wire money\r\n\r\nnow\r\n".to_vec(),
        authenticated_as: authenticated_as.into(),
        client_ip: "192.0.2.1".into(),
        ..Default::default()
    }
}

fn deliver_request(to: &str) -> DeliverRequest {
    DeliverRequest {
        queue_id: 77,
        sender: "ceo@bigbank.example".into(),
        recipients: vec![to.into()],
        message: b"From: ceo@bigbank.example\r\nSubject: planted\r\n\r\nx\r\n".to_vec(),
        ..Default::default()
    }
}

async fn enqueue_code(r: &Running, credential: Option<Credential>, to: &str, auth: &str) -> Code {
    match queue_client(r, credential)
        .await
        .enqueue(enqueue_request(to, auth))
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn deliver_code(r: &Running, credential: Option<Credential>, to: &str) -> Code {
    match delivery_client(r, credential)
        .await
        .deliver(deliver_request(to))
        .await
    {
        Ok(resp) => {
            assert_eq!(
                resp.into_inner().outcomes[0].outcome,
                Outcome::Delivered as i32
            );
            Code::Ok
        }
        Err(s) => s.code(),
    }
}

fn secret_file(dir: &std::path::Path, secret: &InternalSecret) -> std::path::PathBuf {
    let path = dir.join("internal-secret");
    std::fs::write(&path, secret.to_text()).unwrap();
    path
}

/// Services run apart over TCP (PostgreSQL): every internal call without a
/// valid credential of an admitted role is refused, before the store sees
/// it, and the queue will not relay for the inbound role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_need_a_credential_of_an_admitted_role() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = InternalSecret::generate();
    let path = secret_file(secrets.path(), &secret);
    let Some((mda, mta)) = mda_and_mta_apart(&path).await else {
        return;
    };
    let mda_addr = mda.stack.addr("mda").unwrap();
    let store = with_accounts(&mda, &["bob@example.test"]).await;
    let stranger = InternalSecret::generate();
    let (local, remote) = ("bob@example.test", "victim@victim.test");

    // Queue.Enqueue: no credential, another deployment's, a forged role.
    assert_eq!(
        enqueue_code(&mta, None, remote, "").await,
        Code::Unauthenticated
    );
    assert_eq!(
        enqueue_code(
            &mta,
            Some(stranger.credential(Role::Msa)),
            remote,
            "x@example.test"
        )
        .await,
        Code::Unauthenticated
    );
    let forged = Credential::parse(
        &secret
            .credential(Role::Inbound)
            .expose()
            .replace(".inbound.", ".msa."),
    )
    .unwrap();
    assert_eq!(
        enqueue_code(&mta, Some(forged), remote, "x@example.test").await,
        Code::Unauthenticated
    );
    // The MTA role delivers; it does not enqueue.
    assert_eq!(
        enqueue_code(&mta, Some(secret.credential(Role::Mta)), local, "").await,
        Code::PermissionDenied
    );
    // Inbound may enqueue for our users only: it cannot relay, whatever it claims.
    let inbound = secret.credential(Role::Inbound);
    assert_eq!(
        enqueue_code(&mta, Some(inbound.clone()), remote, "").await,
        Code::PermissionDenied
    );
    assert_eq!(
        enqueue_code(&mta, Some(inbound.clone()), remote, "alice@example.test").await,
        Code::PermissionDenied
    );
    // The MSA relays only what an authenticated user submitted.
    let msa = secret.credential(Role::Msa);
    assert_eq!(
        enqueue_code(&mta, Some(msa.clone()), remote, "").await,
        Code::PermissionDenied
    );
    assert_eq!(
        store.queue_size().await.unwrap(),
        0,
        "nothing refused was queued"
    );
    assert_eq!(enqueue_code(&mta, Some(inbound), local, "").await, Code::Ok);

    // Delivery.Deliver: only the MTA role writes into mailboxes.
    assert_eq!(deliver_code(&mda, None, local).await, Code::Unauthenticated);
    assert_eq!(
        deliver_code(&mda, Some(stranger.credential(Role::Mta)), local).await,
        Code::Unauthenticated
    );
    assert_eq!(
        deliver_code(&mda, Some(msa), local).await,
        Code::PermissionDenied
    );
    assert_eq!(
        deliver_code(&mda, Some(secret.credential(Role::Inbound)), local).await,
        Code::PermissionDenied
    );
    // Health stays open (it neither reads nor writes mail).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(mda_addr).await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    // What the inbound role queued reaches bob through the MTA's own
    // credential: the one delivery above that was allowed.
    wait_for("the queue to empty", Duration::from_secs(30), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    assert_eq!(inbox_len(&store, local).await, 1);
    assert_eq!(
        deliver_code(&mda, Some(secret.credential(Role::Mta)), local).await,
        Code::Ok
    );
    assert_eq!(inbox_len(&store, local).await, 2);
    mta.stack.stop(Duration::from_secs(5)).await;
    mda.stack.stop(Duration::from_secs(5)).await;
}

async fn inbox_len(store: &mailroom_store::Store, account: &str) -> usize {
    let inbox = mailroom_tests::inbox_id(store, account).await;
    store.list_messages(inbox).await.unwrap().len()
}

/// `mailroom serve mda` and `mailroom serve mta` on one fresh PostgreSQL
/// database, both reading the secret file at `secret`, the MTA delivering
/// through the MDA over gRPC.
async fn mda_and_mta_apart(secret: &std::path::Path) -> Option<(Running, Running)> {
    let p = secret.to_path_buf();
    let mda = start_with(Backend::Postgres, Some(mailroom::ServiceName::Mda), |c| {
        c.internal.secret_file = Some(p);
    })
    .await?;
    let (url, mda_addr, p) = (
        mda.db.url.clone(),
        mda.stack.addr("mda").unwrap(),
        secret.to_path_buf(),
    );
    let mta = start_with(Backend::Postgres, Some(mailroom::ServiceName::Mta), |c| {
        c.internal.secret_file = Some(p);
        c.store.url = Some(url);
        c.mta.delivery_endpoint = format!("http://{mda_addr}");
    })
    .await
    .unwrap();
    Some((mda, mta))
}

/// Submission to delivery with MSA, MTA and MDA in separate "processes" on
/// one PostgreSQL database, configured as docker-compose.yml configures
/// them: the MTA and MDA read the shared secret file, the MSA holds only its
/// own role credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mail_path_works_with_the_services_apart_and_their_credentials() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = InternalSecret::generate();
    let path = secret_file(secrets.path(), &secret);
    let msa_credential = secrets.path().join("msa-credential");
    // What `mailroom internal token msa` prints, as the README says to run it.
    let printed = mailroom_tests::cli(
        &[
            "internal",
            "token",
            "msa",
            "--secret-file",
            path.to_str().unwrap(),
        ],
        "",
    )
    .await
    .unwrap();
    std::fs::write(&msa_credential, &printed).unwrap();
    let Some((mda, mta)) = mda_and_mta_apart(&path).await else {
        return;
    };
    let url = mda.db.url.clone();
    let queue_addr = mta.stack.addr("queue").unwrap();
    let msa = start_with(Backend::Postgres, Some(mailroom::ServiceName::Msa), |c| {
        c.internal.credential_file = Some(msa_credential);
        c.store.url = Some(url);
        c.submission.queue_endpoint = format!("http://{queue_addr}");
    })
    .await
    .unwrap();
    assert!(
        !msa.data_dir.path().join("internal-secret").exists(),
        "the MSA needs no secret when it has its credential"
    );
    let store = with_accounts(&mda, &["alice@example.test", "bob@example.test"]).await;
    let (mut c, _) = SmtpClient::connect(msa.stack.addr("submission").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    assert_eq!(c.cmd("MAIL FROM:<alice@example.test>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<bob@example.test>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(
        b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: apart\r\n\r\nhi\r\n.\r\n",
    )
    .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    // Port 25 of the MTA, also through the Queue (in its own process).
    let (mut s, _) = SmtpClient::connect(mta.stack.addr("smtp").unwrap()).await;
    s.cmd("EHLO remote.test").await;
    assert_eq!(s.cmd("MAIL FROM:<x@remote.test>").await.0, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@example.test>").await.0, 250);
    assert_eq!(s.cmd("DATA").await.0, 354);
    s.send(b"From: x@remote.test\r\nSubject: inbound\r\n\r\nhi\r\n.\r\n")
        .await;
    assert_eq!(s.reply().await.0, 250);
    wait_for("both deliveries", Duration::from_secs(30), async || {
        inbox_len(&store, "bob@example.test").await == 2
    })
    .await;
    // The worker records each result in a commit after the delivery's own.
    wait_for("the queue to empty", Duration::from_secs(30), async || {
        store.queue_size().await.unwrap() == 0
    })
    .await;
    for r in [msa, mta, mda] {
        r.stack.stop(Duration::from_secs(5)).await;
    }
}

/// The embedded default (`mailroom serve`, everything in one process) opens
/// no internal port: the services talk in-process, and mail still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_opens_no_internal_port() {
    // Fixed ports, so that "nothing answers there" means something. They
    // are taken below the kernel's ephemeral range (32768 and up by
    // default), so that no other test's port-0 listener can land on them
    // while this one runs and make "something answers" a false alarm.
    let mut seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    let mut free_low_port = |not: u16| loop {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = 10_000 + ((seed >> 8) % 20_000) as u16;
        if port != not && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let queue_port = free_low_port(0);
    let mda_port = free_low_port(queue_port);
    let r = start_with(Backend::Sqlite, None, |c| {
        c.internal.expose = false;
        c.mta.grpc_listen = format!("127.0.0.1:{queue_port}").parse().unwrap();
        c.mda.listen = format!("127.0.0.1:{mda_port}").parse().unwrap();
    })
    .await
    .unwrap();
    assert_eq!(r.stack.addr("queue"), None);
    assert_eq!(r.stack.addr("mda"), None);
    let banner = r.stack.banner();
    assert!(
        !banner.contains("Queue") && !banner.contains("Delivery"),
        "{banner}"
    );
    for port in [queue_port, mda_port] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "nothing listens on {port}"
        );
    }
    let store = with_accounts(&r, &["alice@example.test", "bob@example.test"]).await;
    let (mut c, _) = SmtpClient::connect(r.stack.addr("submission").unwrap()).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.auth_plain("alice@example.test", PASSWORD).await.0, 235);
    c.cmd("MAIL FROM:<alice@example.test>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"From: alice@example.test\r\nSubject: inside\r\n\r\nhi\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    wait_for("the delivery", Duration::from_secs(30), async || {
        inbox_len(&store, "bob@example.test").await == 1
    })
    .await;
    r.stack.stop(Duration::from_secs(5)).await;
}
