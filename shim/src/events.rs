//! Task events to containerd, in its order: TaskCreate → TaskStart →
//! TaskExit → TaskDelete (plus TaskPaused, TaskResumed and TaskOOM).
//!
//! The ttrpc connection to containerd does not survive a containerd
//! restart, so a failed publish reconnects once and retries.

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use std::sync::Mutex;

pub struct Events {
    namespace: String,
    ttrpc_address: String,
    publisher: Mutex<Option<RemotePublisher>>,
}

impl Events {
    pub fn new(namespace: &str, ttrpc_address: &str, publisher: RemotePublisher) -> Self {
        Events {
            namespace: namespace.into(),
            ttrpc_address: ttrpc_address.into(),
            publisher: Mutex::new(Some(publisher)),
        }
    }

    /// Publishes `event` under `topic`; failures are logged, never fatal:
    /// containerd also learns a task's fate through `Wait` and `State`.
    pub fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let mut publisher = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if publisher.is_none() {
                match RemotePublisher::new(&self.ttrpc_address) {
                    Ok(p) => *publisher = Some(p),
                    Err(e) => {
                        log::warn!(
                            "event {topic}: cannot reach containerd at {}: {e}",
                            self.ttrpc_address
                        );
                        return;
                    }
                }
            }
            let Some(p) = publisher.as_ref() else { return };
            match p.publish(
                Context::default(),
                topic,
                &self.namespace,
                event.clone_box(),
            ) {
                Ok(()) => return,
                Err(e) if attempt == 0 => {
                    log::info!("event {topic}: {e}; reconnecting to containerd");
                    *publisher = None;
                }
                Err(e) => log::warn!("event {topic} lost: {e}"),
            }
        }
    }
}
