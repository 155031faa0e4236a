//! The Task API RPCs `ctr` 1.6 has no command for, called directly on the
//! real shim's ttrpc socket (the address containerd wrote into the bundle),
//! under a real containerd with a real guest: Update, Exec, Checkpoint,
//! ResizePty, Connect, State, and unknown ids.

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::{Client, Code, Error};
use containerd_shim_protos::TaskClient;
use furnace_tests::containerd::NAMESPACE;
use furnace_tests::stack::FurnaceStack;

const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

fn code(result: Result<impl std::fmt::Debug, Error>) -> (Code, String) {
    match result {
        Err(Error::RpcStatus(status)) => (status.code(), status.message),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

/// One detached app, and every RPC ctr cannot send, checked against the
/// host's cgroup files and the errors' codes and messages.
#[test]
fn rpcs_beyond_ctr_answer_as_documented() {
    let s = FurnaceStack::start("rpc").expect("the Furnace stack starts");
    let id = "rpc";
    s.run_detached(id, &[], &["/furnace-probe", "hold"])
        .unwrap();
    let pid = s.task_pid(id).expect("pid");
    let bundle = s
        .containerd
        .dir
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let task = TaskClient::new(Client::connect(address.trim()).unwrap());
    let ctx = Context::default;

    let mut connect = api::ConnectRequest::new();
    connect.id = id.into();
    let connected = task.connect(ctx(), &connect).unwrap();
    assert_eq!(connected.task_pid, pid);
    assert_eq!(s.containerd.pids_of_shims(), vec![connected.shim_pid]);

    // Update: tighten to 100 MiB, then ask for 4 GiB and stay at the 300 MiB in force.
    let limit = format!("/sys/fs/cgroup/memory/furnace/{NAMESPACE}/{id}/memory.limit_in_bytes");
    for (asked, expect) in [(100u64 << 20, 100u64 << 20), (4 << 30, 300 << 20)] {
        let mut any = Any::new();
        any.type_url = RESOURCES_TYPE_URL.into();
        any.value = serde_json::to_vec(&serde_json::json!({"memory": {"limit": asked}})).unwrap();
        let mut update = api::UpdateTaskRequest::new();
        update.id = id.into();
        update.resources = MessageField::some(any);
        task.update(ctx(), &update).unwrap();
        assert_eq!(
            std::fs::read_to_string(&limit).unwrap().trim(),
            expect.to_string()
        );
    }
    let mut garbage = api::UpdateTaskRequest::new();
    garbage.id = id.into();
    let mut any = Any::new();
    any.value = b"not json".to_vec();
    garbage.resources = MessageField::some(any);
    assert_eq!(code(task.update(ctx(), &garbage)).0, Code::INVALID_ARGUMENT);

    let mut exec = api::ExecProcessRequest::new();
    exec.id = id.into();
    exec.exec_id = "shell".into();
    let (c, message) = code(task.exec(ctx(), &exec));
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(message.contains("allow_exec"), "{message}");

    let mut checkpoint = api::CheckpointTaskRequest::new();
    checkpoint.id = id.into();
    assert_eq!(
        code(task.checkpoint(ctx(), &checkpoint)).0,
        Code::UNIMPLEMENTED
    );

    let mut resize = api::ResizePtyRequest::new();
    resize.id = id.into();
    let (c, message) = code(task.resize_pty(ctx(), &resize));
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(message.contains("terminal"), "{message}");

    let mut state = api::StateRequest::new();
    state.id = id.into();
    let st = task.state(ctx(), &state).unwrap();
    assert_eq!(
        (st.pid, st.status.enum_value()),
        (pid, Ok(api::Status::RUNNING))
    );
    state.id = "no-such-task".into();
    assert_eq!(code(task.state(ctx(), &state)).0, Code::NOT_FOUND);
    state.id = id.into();
    state.exec_id = "no-such-exec".into();
    assert_eq!(code(task.state(ctx(), &state)).0, Code::NOT_FOUND);

    s.remove(id);
    assert_eq!(s.traces_of(id), Vec::<String>::new());
}

/// `-v` prints the version; `-info` answers containerd 2's introspection with
/// a `RuntimeInfo` naming the runtime and carrying the OCI features JSON.
/// Nothing goes to stderr.
#[test]
fn version_and_info_flags() {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::types::introspection::RuntimeInfo;
    let shim = furnace_tests::containerd::require_furnace_shim();
    let out = std::process::Command::new(&shim)
        .arg("-v")
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains("io.furnace.v1"),
        "{text}"
    );

    let out = std::process::Command::new(&shim)
        .arg("-info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("a RuntimeInfo message");
    assert_eq!(info.name, "io.furnace.v1");
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
    assert_eq!(features["linux"]["seccomp"]["enabled"], true);
    assert_eq!(features["linux"]["capabilities"], serde_json::json!([]));
}
