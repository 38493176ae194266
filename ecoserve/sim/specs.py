"""Model and hardware presets for the roofline engine model.

Models: shapes from each model's published Hugging Face ``config.json``
(BF16 weights, 2 bytes per parameter and per KV element).

Hardware: peak dense BF16 tensor throughput, memory size and bandwidth, and
link speeds from the vendors' data sheets; the *achievable* share of each peak
is a documented estimate (``*_eff``), not a vendor figure:

- ``gemm_eff`` 0.65: large BF16 GEMMs reach roughly 60-75% of dense peak on
  Ampere/Ada/Hopper in cuBLAS; we take the low middle because a transformer
  step also runs small, badly shaped GEMMs.
- ``attn_eff`` 0.45: FlashAttention-2 forward reaches ~40-50% of peak on A100
  (Dao 2023) and less on short sequences.
- ``mem_eff`` 0.80: STREAM-like copies reach ~80-90% of HBM/GDDR peak;
  weight-streaming GEMV kernels a little less.
- ``link_eff``: PCIe 0.65 (NCCL bus bandwidth on PCIe Gen4 x16 is ~20 of the
  32 GB/s per direction), NVLink 0.75 (NCCL all-reduce bus bandwidth ~ 3/4 of
  the link rate), network 0.85 (RDMA/TCP goodput).
- ``step_overhead_s`` 3 ms + ``per_seq_overhead_s`` 10 us: the CPU side of a
  vLLM 0.7 (V0) step (scheduling, input preparation, sampling, detokenizing)
  that does not overlap with the GPU. An estimate; vLLM's own V1 announcement
  cites this overhead as a main cost of V0 at small batches.
- ``hop_latency_s``: per-hop latency of a ring all-reduce (2*(TP-1) hops per
  all-reduce): ~5 us over PCIe, ~2 us over NVLink (NCCL small-message numbers).

These constants are the ``constant`` cost model, kept to compare with. The
default, ``measured``, replaces the GEMM, attention and CPU-overhead shares
with the ones Vidur measured (``measured.py``); bandwidths, links and KV
capacity stay as here.

KV capacity follows vLLM's rule: ``gpu_memory_utilization`` (0.9) of each
GPU, minus the weight shard, minus ``activation_reserve_gb`` per GPU for
activations, CUDA graphs and workspace (an estimate).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_context: int
    source: str
    head_dim: int = 0  # 0: hidden // heads
    tied_embeddings: bool = False
    dtype_bytes: int = 2

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (attention + SwiGLU MLP; norms and biases omitted)."""
        q_o = 2 * self.hidden * self.heads * self.hd
        k_v = 2 * self.hidden * self.kv_heads * self.hd
        mlp = 3 * self.hidden * self.intermediate
        return q_o + k_v + mlp

    @property
    def linear_params(self) -> int:
        """Parameters every token multiplies by (all layers; not the embeddings)."""
        return self.layers * self.layer_params

    @property
    def params(self) -> int:
        emb = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.linear_params + emb

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token in every layer."""
        return 2 * self.layers * self.kv_heads * self.hd * self.dtype_bytes


MODELS: dict[str, ModelSpec] = {
    # huggyllama/llama-30b config.json (LLaMA-1 30B): multi-head attention.
    "llama-30b": ModelSpec(
        "llama-30b", layers=60, hidden=6656, heads=52, kv_heads=52, intermediate=17920, vocab=32000,
        max_context=2048, source="huggingface.co/huggyllama/llama-30b config.json",
    ),
    # codellama/CodeLlama-34b-hf config.json: GQA with 8 KV heads.
    "codellama-34b": ModelSpec(
        "codellama-34b", layers=48, hidden=8192, heads=64, kv_heads=8, intermediate=22016, vocab=32000,
        max_context=16384, source="huggingface.co/codellama/CodeLlama-34b-hf config.json",
    ),
    # Qwen/Qwen2-72B config.json: GQA with 8 KV heads, 152k vocabulary.
    "qwen2-72b": ModelSpec(
        "qwen2-72b", layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=29568, vocab=152064,
        max_context=32768, source="huggingface.co/Qwen/Qwen2-72B config.json",
    ),
}


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    gpu: str
    bf16_tflops: float  # dense, per GPU
    mem_gb: float  # per GPU
    hbm_gbps: float  # GB/s per GPU
    intra_link: str  # "pcie" or "nvlink"
    intra_gbps: float  # GB/s per GPU, one direction
    inter_gbps: float  # Gb/s of network per node (all NICs together)
    gpus_per_node: int
    source: str
    gemm_eff: float = 0.65
    attn_eff: float = 0.45
    mem_eff: float = 0.80
    link_eff: float = 0.65
    net_eff: float = 0.85
    hop_latency_s: float = 5e-6
    net_latency_s: float = 50e-6
    step_overhead_s: float = 3e-3
    per_seq_overhead_s: float = 10e-6
    gpu_memory_utilization: float = 0.90
    activation_reserve_gb: float = 2.0
    # The GPU whose measured operator shares (``measured.py``, Vidur's profiles)
    # stand for this one under the measured cost model.
    profile_gpu: str = "a100"

    @property
    def net_bytes_per_s(self) -> float:
        return self.inter_gbps / 8 * 1e9 * self.net_eff


HARDWARE: dict[str, HardwareSpec] = {
    # NVIDIA L20 data sheet: 48 GB GDDR6 at 864 GB/s, 119.5 TFLOPS dense BF16
    # (239 with sparsity), PCIe Gen4 x16 (64 GB/s both directions), no NVLink.
    # Cluster per the paper: 8 GPUs per node, 10 Gbps Ethernet between nodes.
    "l20": HardwareSpec(
        "l20", "NVIDIA L20 48GB", bf16_tflops=119.5, mem_gb=48, hbm_gbps=864, intra_link="pcie",
        intra_gbps=32, inter_gbps=10, gpus_per_node=8,
        source="NVIDIA L20 product brief; paper: PCIe in node, 10 Gbps Ethernet",
        mem_eff=0.80, link_eff=0.65, hop_latency_s=5e-6,
        profile_gpu="a40",  # closest profiled: A40, also 48 GB GDDR6 (Ampere; 149.7 TFLOP/s, 696 GB/s)
    ),
    # NVIDIA A800 80GB SXM (A100 with NVLink capped at 400 GB/s both directions):
    # 312 TFLOPS dense BF16, HBM2e 2,039 GB/s. Paper: 25 Gbps RoCE between nodes.
    "a800": HardwareSpec(
        "a800", "NVIDIA A800 80GB SXM", bf16_tflops=312, mem_gb=80, hbm_gbps=2039, intra_link="nvlink",
        intra_gbps=200, inter_gbps=25, gpus_per_node=8,
        source="NVIDIA A800 data sheet (NVLink 400 GB/s); paper: 25 Gbps RoCE",
        link_eff=0.75, hop_latency_s=2e-6,
        profile_gpu="a100",  # an A100 80GB with NVLink capped: the same chip
    ),
    # NVIDIA H100 SXM5 80GB: 989 TFLOPS dense BF16, HBM3 3.35 TB/s, NVLink 4 at
    # 900 GB/s both directions. Paper: 8 x 400 Gbps InfiniBand per node.
    "h100": HardwareSpec(
        "h100", "NVIDIA H100 80GB SXM", bf16_tflops=989, mem_gb=80, hbm_gbps=3350, intra_link="nvlink",
        intra_gbps=450, inter_gbps=3200, gpus_per_node=8,
        source="NVIDIA H100 data sheet; paper: 8 x 400 Gbps InfiniBand",
        link_eff=0.75, hop_latency_s=2e-6, step_overhead_s=2.5e-3,
        profile_gpu="h100",
    ),
}

# Tensor-parallel degree per (hardware, model). L20 is the paper's (30B/34B at
# TP=4, 72B at TP=8); for the 80 GB GPUs the paper gives none, so we take the
# smallest power of two that leaves room for a useful KV cache.
DEFAULT_TP: dict[tuple[str, str], int] = {
    ("l20", "llama-30b"): 4, ("l20", "codellama-34b"): 4, ("l20", "qwen2-72b"): 8,
    ("a800", "llama-30b"): 2, ("a800", "codellama-34b"): 2, ("a800", "qwen2-72b"): 4,
    ("h100", "llama-30b"): 2, ("h100", "codellama-34b"): 2, ("h100", "qwen2-72b"): 4,
}


def default_tp(hardware: str, model: str) -> int:
    return DEFAULT_TP.get((hardware, model), 4)
