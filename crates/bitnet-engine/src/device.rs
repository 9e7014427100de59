//! Where a model runs: `--device auto|cpu|cuda[:N]`.
//!
//! `auto` takes a CUDA GPU when this build has the `cuda` feature and one is usable (driver
//! present, a device, the kernels compile), and otherwise stays on the CPU with the reason.

use crate::error::{Error, Result};
use crate::model::Model;
use std::fmt;
use std::str::FromStr;

/// A device choice, as given on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A GPU if one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU kernels.
    Cpu,
    /// CUDA device `N` (an error if it cannot be used).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Input(format!(
                "device {s:?}: expected auto, cpu, cuda or cuda:N (N a device index)"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Device::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => write!(f, "auto"),
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where [`Model::use_device`] put the model, with a line for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// True when the forward pass runs on a GPU.
    pub gpu: bool,
    /// E.g. `cuda:0 (NVIDIA H200, compute 9.0)` or `cpu (auto: no CUDA driver found)`.
    pub description: String,
}

impl Model {
    /// Moves the forward pass to `device` (weights are uploaded once; the CPU copy stays for
    /// the embedding lookup). `Cpu` and a failed `Auto` keep the CPU kernels; `Cuda(n)` fails
    /// when the GPU cannot be used, with the reason.
    pub fn use_device(&mut self, device: Device) -> Result<Placement> {
        let cpu = |why: String| Placement {
            gpu: false,
            description: why,
        };
        match device {
            Device::Cpu => {
                self.drop_gpu();
                Ok(cpu("cpu".into()))
            }
            Device::Auto => match self.try_cuda(0) {
                Ok(desc) => Ok(Placement {
                    gpu: true,
                    description: desc,
                }),
                Err(why) => {
                    let p = cpu(format!("cpu (auto: {why})"));
                    tracing::info!("device auto: running on the CPU: {why}");
                    Ok(p)
                }
            },
            Device::Cuda(n) => self
                .try_cuda(n)
                .map(|desc| Placement {
                    gpu: true,
                    description: desc,
                })
                .map_err(|why| Error::Device(format!("cuda:{n}: {why}"))),
        }
    }

    /// Whether the forward pass runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.cuda.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Free and total bytes of the GPU's memory when the model runs on one.
    pub fn gpu_memory(&self) -> Option<(usize, usize)> {
        #[cfg(feature = "cuda")]
        {
            self.cuda.as_ref().and_then(|c| c.memory())
        }
        #[cfg(not(feature = "cuda"))]
        {
            None
        }
    }

    /// Bytes one cached position takes (keys and values of every layer) on the model's device:
    /// f32 on the CPU, the GPU cache's precision on a GPU.
    pub fn kv_bytes_per_position(&self, host: crate::KvType) -> usize {
        let c = &self.config;
        #[cfg(feature = "cuda")]
        let elem = self.cuda.as_ref().map_or(host.bytes(), |g| g.kv_bytes);
        #[cfg(not(feature = "cuda"))]
        let elem = host.bytes();
        2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * elem
    }

    fn drop_gpu(&mut self) {
        #[cfg(feature = "cuda")]
        {
            self.cuda = None;
        }
    }

    #[cfg(feature = "cuda")]
    fn try_cuda(&mut self, ordinal: usize) -> std::result::Result<String, String> {
        let runner = crate::cuda::CudaRunner::new(self, ordinal)?;
        let desc = runner.description().to_string();
        self.cuda = Some(std::sync::Arc::new(runner));
        Ok(desc)
    }

    #[cfg(not(feature = "cuda"))]
    fn try_cuda(&mut self, _ordinal: usize) -> std::result::Result<String, String> {
        Err("this build has no CUDA support (rebuild with `--features cuda`)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("CPU".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        let e = "cuda:x".parse::<Device>().unwrap_err().to_string();
        assert!(e.contains("cuda:x") && e.contains("cuda:N"), "{e}");
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
