//! One VM (an Envoy worker's copy of the plugin): a wasmtime store with the module instantiated,
//! started and configured the way Envoy does it. Callbacks go through `call`, which sets the
//! effective context and turns traps into errors; a VM that trapped stays failed, as in Envoy.

use crate::imports;
use crate::state::{PluginSetup, SharedHandle, VmState};
use wasmtime::{Instance, Module, Store, Val};

/// Why the host could not run the module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmError {
    /// The module could not be loaded (missing imports, no ABI version export…).
    Load(String),
    /// The module trapped (panic, unreachable, proc_exit); the VM is dead afterwards.
    Trap(String),
}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmError::Load(m) => write!(f, "load failed: {m}"),
            VmError::Trap(m) => write!(f, "the module trapped: {m}"),
        }
    }
}

impl std::error::Error for VmError {}

pub type VmResult<T> = Result<T, VmError>;

pub struct Vm {
    pub store: Store<VmState>,
    instance: Instance,
    pub root_id: u32,
    next_context: u32,
    trapped: Option<String>,
    /// Whether `proxy_on_configure` accepted the plugin configuration.
    pub configured: bool,
}

const ABI_VERSIONS: &[&str] = &["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

impl Vm {
    /// Instantiates, runs `_initialize`, creates the root context and runs vm_start and configure.
    pub fn start(host: SharedHandle, vm: u32, setup: PluginSetup, module: &Module) -> VmResult<Vm> {
        let linker =
            imports::linker(module.engine()).map_err(|e| VmError::Load(format!("{e:#}")))?;
        let mut store = Store::new(module.engine(), VmState::new(host, vm, setup));
        // A fuel-metered engine (crate::fuel) needs a full tank; other engines refuse, harmlessly.
        let _ = store.set_fuel(u64::MAX);
        let missing = imports::missing_imports(&linker, &mut store, module);
        if !missing.is_empty() {
            return Err(VmError::Load(format!(
                "the module imports functions the mock host does not provide: {}",
                missing.join(", ")
            )));
        }
        if !module.exports().any(|e| ABI_VERSIONS.contains(&e.name())) {
            return Err(VmError::Load("no proxy_abi_version_0_2_* export".into()));
        }
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| VmError::Load(format!("{e:#}")))?;
        let mut vm = Vm {
            store,
            instance,
            root_id: 1,
            next_context: 2,
            trapped: None,
            configured: false,
        };
        if vm.instance.get_func(&mut vm.store, "_initialize").is_some() {
            vm.call_raw("_initialize", &[])?;
        }
        vm.store.data_mut().root_context = 1;
        vm.store.data_mut().contexts.insert(1, 0);
        vm.call(1, "proxy_on_context_create", &[1, 0])?;
        let vm_config = vm.store.data().setup.vm_config.len() as i32;
        let plugin_config = vm.store.data().setup.plugin_config.len() as i32;
        if vm.call(1, "proxy_on_vm_start", &[1, vm_config])? == Some(0) {
            return Err(VmError::Load("proxy_on_vm_start returned false".into()));
        }
        vm.configured = vm.call(1, "proxy_on_configure", &[1, plugin_config])? != Some(0);
        Ok(vm)
    }

    pub fn state(&self) -> &VmState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut VmState {
        self.store.data_mut()
    }

    pub fn trapped(&self) -> Option<&str> {
        self.trapped.as_deref()
    }

    /// A fresh context id (per VM, as proxy-wasm-cpp-host numbers them).
    pub fn next_context_id(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context += 1;
        id
    }

    fn call_raw(&mut self, name: &str, args: &[Val]) -> VmResult<Option<Val>> {
        if let Some(t) = &self.trapped {
            return Err(VmError::Trap(format!("(VM already failed) {t}")));
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            // Envoy skips callbacks the module does not export.
            return Ok(None);
        };
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        match func.call(&mut self.store, args, &mut results) {
            Ok(()) => Ok(results.into_iter().next()),
            Err(e) => {
                let stderr =
                    String::from_utf8_lossy(&self.store.data().shared().stderr).into_owned();
                let message = format!("{name}: {e:#}; stderr: {stderr}");
                self.trapped = Some(message.clone());
                Err(VmError::Trap(message))
            }
        }
    }

    /// Calls a callback with `context` as the effective context; answers its i32 result if any.
    pub fn call(&mut self, context: u32, name: &str, args: &[i32]) -> VmResult<Option<i32>> {
        self.store.data_mut().current = context;
        let args: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        Ok(self.call_raw(name, &args)?.and_then(|v| v.i32()))
    }

    /// Copies bytes out of the module's memory (for host self-tests).
    pub fn read_memory(&mut self, ptr: u32, len: u32) -> Vec<u8> {
        let Some(memory) = self.instance.get_memory(&mut self.store, "memory") else {
            return Vec::new();
        };
        let data = memory.data(&self.store);
        data.get(ptr as usize..(ptr + len) as usize)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Calls a callback that returns a bool-like i32 and answers whether it was non-zero.
    pub fn call_bool(&mut self, context: u32, name: &str, args: &[i32]) -> VmResult<bool> {
        Ok(self.call(context, name, args)?.unwrap_or(1) != 0)
    }
}
