//! `furnace-fuzz-seeds DIR`: writes `DIR/<target>/<seed>` for every fuzz
//! target, each an input that decodes and reaches the code behind the
//! decoder: a batch that walks the task list, a real Noise handshake, an
//! ELF core with the kernel banner in it.

use furnace_api::fac::v1::{frame::Body, Hello, Kind, Sealed, Welcome};
use furnace_api::facilities::frame;
use furnace_api::facilities::keys::public_of;
use furnace_api::facilities::seal::{AppHandshake, BackendHandshake};
use furnace_api::facilities::PrivateKey;
use furnace_api::ttrpc::Request;
use furnace_api::v1::{call::Op, BatchRequest, MemberOffsetRequest};
use furnace_api::wire::{self, TYPE_REQUEST, TYPE_RESPONSE};
use furnace_api::{Batch, VMI_SERVICE};
use furnace_vmi::linux::test_image::{self, Image, PROFILE_JSON};
use furnace_vmi::profile::Profile;
use prost::Message;
use std::path::PathBuf;

/// The keys `facilities_frames` opens with.
const APP_KEY: [u8; 32] = [7; 32];
const BACKEND_KEY: [u8; 32] = [9; 32];

fn main() {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: furnace-fuzz-seeds DIR"),
    );
    let profile = test_image::profile();
    let image = Image::build(&profile);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let target = dir.join(target);
        std::fs::create_dir_all(&target).expect("create the seed directory");
        std::fs::write(target.join(name), bytes).expect("write a seed");
    };

    let batch = task_list_batch(&profile);
    write("ttrpc_frames", "requests", &ttrpc_stream(&batch));
    write("batch", "task-list", &batch_input(&batch, image.bytes()));
    write("linux_walkers", "two-tasks", &walker_input(image.bytes()));
    write("snapshot", "raw", image.bytes());
    write("snapshot", "elf-core", &elf_core(image.bytes()));
    write("isf_profile", "debian-6.1", PROFILE_JSON);
    write("facilities_frames", "session", &facilities_session());
    write("annotations", "app", ANNOTATIONS.as_bytes());
    write(
        "annotations",
        "limits",
        b"cpu=1,memory=128Mi,pids=30,storage=4Mi",
    );
    write("annotations", "provider-config", PROVIDER_CONFIG.as_bytes());
}

/// init_task's pid and comm, and the next task's pid through the list link.
fn task_list_batch(profile: &Profile) -> BatchRequest {
    let offset = |member: &str| {
        profile
            .member_offset("task_struct", member)
            .expect("a task_struct member")
    };
    let mut batch = Batch::new();
    let init_task = batch.symbol_address("init_task");
    let pid = batch.read_integer(0, offset("pid"), 4);
    batch.add_address(pid, init_task);
    let comm = batch.read_string(0, offset("comm"), 16);
    batch.add_address(comm, init_task);
    let next = batch.read_integer(0, offset("tasks"), 8);
    batch.add_address(next, init_task);
    let next_pid = batch.read_integer(0, offset("pid") - offset("tasks"), 4);
    batch.add_address(next_pid, next);
    batch.push(Op::MemberOffset(MemberOffsetRequest {
        structure: "task_struct".into(),
        member: "comm".into(),
    }));
    BatchRequest {
        calls: batch.calls().to_vec(),
    }
}

/// A Batch request, a request for a method that does not exist, a frame
/// of the response type (which a server does not take) and a request whose
/// payload is no protobuf.
fn ttrpc_stream(batch: &BatchRequest) -> Vec<u8> {
    let request = |method: &str, payload: Vec<u8>| {
        Request {
            service: VMI_SERVICE.into(),
            method: method.into(),
            payload,
            timeout_nano: 1_000_000_000,
            metadata: Vec::new(),
        }
        .encode_to_vec()
    };
    let mut out = Vec::new();
    let frames = [
        (1, TYPE_REQUEST, request("Batch", batch.encode_to_vec())),
        (3, TYPE_REQUEST, request("NoSuchMethod", Vec::new())),
        (5, TYPE_RESPONSE, request("Batch", Vec::new())),
        (7, TYPE_REQUEST, vec![0xff; 12]),
    ];
    for (stream, kind, payload) in frames {
        wire::write_frame(&mut out, stream, kind, &payload).expect("a frame in memory");
    }
    out
}

/// The `batch` target's input: a length byte in units of 8, the batch
/// padded to it with an unknown field, then guest memory.
fn batch_input(batch: &BatchRequest, memory: &[u8]) -> Vec<u8> {
    let mut encoded = batch.encode_to_vec();
    let mut padded = encoded.len().div_ceil(8) * 8;
    if padded - encoded.len() < 3 && padded != encoded.len() {
        padded += 8;
    }
    let pad = padded - encoded.len();
    if pad > 0 {
        // Field 100, length-delimited: a two-byte key, a one-byte length.
        encoded.extend_from_slice(&[0xa2, 0x06, (pad - 3) as u8]);
        encoded.resize(padded, 0);
    }
    assert!(BatchRequest::decode(encoded.as_slice()).is_ok_and(|b| &b == batch));
    let units = u8::try_from(padded / 8).expect("the seed batch fits the length byte");
    let mut out = vec![units];
    out.extend_from_slice(&encoded);
    out.extend_from_slice(memory);
    out
}

/// The `linux_walkers` target's input: eight register words (CR3 0, pid 1
/// for the page-table lookup, four-level paging), then guest memory.
fn walker_input(memory: &[u8]) -> Vec<u8> {
    let words: [u64; 8] = [0, 0, 0, 0, 0, 0, 1, 0];
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.extend_from_slice(memory);
    out
}

/// A `dump-guest-memory`-style ELF core: the image at physical 0 and a
/// copy of its first page at 1 MiB, after the ELF header and two PT_LOAD
/// program headers.
fn elf_core(memory: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let loads: [(u64, &[u8]); 2] = [(0, memory), (1 << 20, &memory[..4096])];
    let mut offset = (EHDR + PHDR * loads.len()) as u64;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    for half in [4u16, 62, 1] {
        // e_type ET_CORE, e_machine EM_X86_64, e_version
        out.extend_from_slice(&half.to_le_bytes());
    }
    out.extend_from_slice(&[0; 2]);
    for word in [0u64, EHDR as u64, 0] {
        // e_entry, e_phoff, e_shoff
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [EHDR as u16, PHDR as u16, loads.len() as u16, 0, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        out.extend_from_slice(&half.to_le_bytes());
    }
    for (physical, bytes) in loads {
        out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        out.extend_from_slice(&6u32.to_le_bytes()); // PF_R | PF_W
        let len = bytes.len() as u64;
        for word in [offset, 0, physical, len, len, 4096] {
            // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
            out.extend_from_slice(&word.to_le_bytes());
        }
        offset += len;
    }
    for (_, bytes) in loads {
        out.extend_from_slice(bytes);
    }
    out
}

/// A Hello and Welcome from a real handshake between the fixed keys, and
/// a request sealed on the session the Hello opens.
fn facilities_session() -> Vec<u8> {
    let app_key = PrivateKey(APP_KEY);
    let backend_key = PrivateKey(BACKEND_KEY);
    let (app, upstream) =
        AppHandshake::start(&app_key, &public_of(&backend_key)).expect("the app's handshake");
    let (backend, _) =
        BackendHandshake::read_hello(&backend_key, &app.hello).expect("the backend reads it");
    let (welcome, _) = backend
        .welcome(&backend_key)
        .expect("the backend's welcome");
    let ciphertext = upstream
        .seal(0, Kind::Request, 1, b"how many processes?")
        .expect("seal a request");
    let mut out = Vec::new();
    for body in [
        Body::Hello(Hello {
            noise: app.hello.clone(),
        }),
        Body::Welcome(Welcome { noise: welcome }),
        Body::Sealed(Sealed {
            seq: 0,
            kind: Kind::Request as i32,
            request_id: 1,
            ciphertext: ciphertext.into(),
            deadline_ms: 1000,
        }),
    ] {
        frame::write(&mut out, body).expect("a frame in memory");
    }
    out
}

const ANNOTATIONS: &str = "furnace.dev/guest=test-guest
furnace.dev/permissions=read,events
furnace.dev/limits=cpu=0.5,memory=64Mi,pids=20,storage=1Mi
furnace.dev/backend=backend.example:7000
furnace.dev/backend-key=CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=
";

const PROVIDER_CONFIG: &str = r#"socket_root = "/run/furnace"
allow_exec = false
tmp_size = "16Mi"

[limits.default]
cpu = 1.5
memory = "256Mi"
pids = 40
storage = "8Mi"

[limits.max]
cpu = 4.0
memory = "1Gi"

[permissions]
grantable = ["read", "pause", "events"]
"#;
