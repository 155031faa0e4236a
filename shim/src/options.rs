//! containerd's runtime options for a non-runc runtime:
//! `runtimeoptions.v1.Options { type_url = 1, config_path = 2, config_body = 3 }`,
//! which `ctr run --runtime-config-path` and the CRI plugin's
//! `[…runtimes.furnace.options] ConfigPath` send with `Create`.

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use std::path::PathBuf;

const TYPE_NAME: &str = "runtimeoptions.v1.Options";
const CONFIG_PATH_FIELD: u32 = 2;

/// The provider config path in `options`, if it names one.
pub fn config_path(options: &Any) -> Option<PathBuf> {
    if !options.type_url.ends_with(TYPE_NAME) {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&options.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH_FIELD && wire_type == 2 {
            return input
                .read_string()
                .ok()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from);
        }
        let skipped = match wire_type {
            0 => input.read_raw_varint64().map(drop),
            1 => input.read_fixed64().map(drop),
            2 => input.read_bytes().map(drop),
            5 => input.read_fixed32().map(drop),
            _ => return None,
        };
        skipped.ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn reads_config_path_from_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/f.toml" (field 2).
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/f.toml");
        let found = config_path(&any("runtimeoptions.v1.Options", value));
        assert_eq!(found, Some(PathBuf::from("/etc/f.toml")));
    }

    #[test]
    fn ignores_other_option_types_and_garbage() {
        assert_eq!(
            config_path(&any("containerd.runc.v1.Options", vec![0x12, 1, b'a'])),
            None
        );
        assert_eq!(
            config_path(&any("runtimeoptions.v1.Options", vec![0x12, 200])),
            None
        );
        assert_eq!(
            config_path(&any("runtimeoptions.v1.Options", vec![0xff; 3])),
            None
        );
    }
}
