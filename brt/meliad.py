r"""Models of the paper's own code (google-research/meliad, commit e8af054) in brt.

meliad's `transformer/` builds its DecoderStack from gin bindings and trains it
with flax; `convert` reads those bindings (meliad's operative config, or the
text of its gin files and bindings) and a parameter tree of that DecoderStack,
and returns the brt ModelConfig and variables that compute the same logits
over consecutive segments. A setting brt cannot express is refused, named.

    cfg, variables = brt.meliad.convert(params, gin_text)
    model = brt.BlockRecurrentTransformer(cfg)
    logits, carry = model.apply(variables, tokens, model.initial_carry(b),
                                start_of_sequence=sos)

From the command line, a meliad checkpoint becomes a brt workdir that
`--mode=eval`, `--mode=generate` and further training accept:

    python -m brt.meliad --checkpoint=MELIAD_WORKDIR \
        --gin_file=base_htrans.gin --gin_file=size/medium_150M.gin \
        --gin_file=recurrent/bias_skip.gin --gin_search_paths=meliad/transformer/configs \
        --brt_gin_file=tasks/pg19_tokens.gin --workdir=workdirs/from_meliad

scripts/check_meliad_parity.py runs meliad's own code beside brt and compares
the logits of every variant (docs/results.md has its output).

What is read of meliad is its configuration surface -- the names of its
configurables, their arguments and defaults, and its parameter names -- never
its code.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from brt.config import ModelConfig

# meliad's defaults (e8af054) for the arguments this module reads, by
# configurable; gin.REQUIRED arguments have none.
_DEFAULTS = {
    "TransformerTaskConfig": dict(sequence_length=4096, batch_size=1,
                                  vocab_size=256),
    "DecoderStack": dict(
        dstack_window_length=0, use_absolute_positions=False,
        use_final_layernorm=True, final_dropout_rate=0.0,
        final_mlp_factory=None, recurrent_layer_indices=(),
        feedback_recurrence=True, memory_factory=None,
        memory_layer_indices=(), dtype="float32"),
    "TransformerLayer": dict(
        use_long_xl_architecture=True, relative_position_type="fourier",
        use_causal_mask=True, attn_dropout_rate=0.0, recurrent_num_states=0,
        recurrent_gate_type="bias", recurrent_single_gate=False,
        recurrent_skip_ffn=False, compute_importance=False,
        memory_num_neighbors=0, dtype="float32"),
    "TransformerBase": dict(
        gate_type="residual", normalize_keys=True, dropout_rate=0.0,
        pre_attn_dropout=True, post_attn_dropout=False, pre_ffn_dropout=False,
        post_ffn_dropout=True),
    "MLP": dict(hidden_activation="relu", final_activation=None,
                use_bias=True),
    "LayerNorm": dict(epsilon=1e-6, use_scale=True, use_bias=False,
                      use_mean=False, use_scalar_scale_bias=False,
                      enable_layernorm=True),
}
_GATES = {"bias": "fixed", "lstm": "lstm"}
_ACTIVATIONS = ("relu", "swish")  # meliad's swish is x * sigmoid(x), as flax's.
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


class UnsupportedMeliadConfig(ValueError):
  """A meliad setting that brt cannot express."""


# --- gin bindings -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Reference:
  """`@scope/name` in gin: a configurable passed as a value."""
  scoped_name: str

  @property
  def scope(self) -> str:
    return self.scoped_name.rpartition("/")[0]

  @property
  def name(self) -> str:
    return _short(self.scoped_name.rpartition("/")[2])


@dataclasses.dataclass(frozen=True)
class _Macro:
  name: str


def _short(selector: str) -> str:
  """`transformer_layer.TransformerLayer` -> `TransformerLayer`."""
  return selector.rpartition(".")[2]


class Bindings:
  """meliad's gin bindings, parsed without importing meliad.

  Later bindings win, as in gin; `get(name, arg, scope)` takes the scoped
  binding, then the unscoped one, then meliad's default.
  """

  def __init__(self, texts: Iterable[str], search_paths: Sequence[str] = ()):
    self._values: dict[tuple[str, str, str], Any] = {}
    self._macros: dict[str, Any] = {}
    for text in texts:
      self._parse(text, search_paths, seen=())

  def _parse(self, text: str, search_paths, seen):
    from gin import config_parser

    class Delegate(config_parser.ParserDelegate):
      def configurable_reference(self, scoped_name, evaluate):
        return _Reference(scoped_name)

      def macro(self, name):
        return _Macro(name)

    for statement in config_parser.ConfigParser(text, Delegate()):
      if isinstance(statement, config_parser.IncludeStatement):
        path = _find_include(statement.filename, search_paths)
        if path in seen:
          raise UnsupportedMeliadConfig(f"gin include cycle through {path}.")
        with open(path, encoding="utf-8") as f:
          self._parse(f.read(), [os.path.dirname(path), *search_paths],
                      seen + (path,))
      elif isinstance(statement, config_parser.BindingStatement):
        if not statement.arg_name:  # NAME = value: a macro.
          self._macros[statement.selector] = statement.value
        else:
          key = (statement.scope, _short(statement.selector),
                 statement.arg_name)
          self._values[key] = statement.value

  def resolve(self, value, depth=0):
    if depth > 50:
      raise UnsupportedMeliadConfig("gin macros refer to each other in a cycle.")
    if isinstance(value, _Macro):
      if value.name not in self._macros:
        raise UnsupportedMeliadConfig(
            f"gin macro %{value.name} is used but never defined; give the "
            "gin file that defines it, or --gin_param='"
            f"{value.name} = ...'.")
      return self.resolve(self._macros[value.name], depth + 1)
    if isinstance(value, (list, tuple)):
      return type(value)(self.resolve(v, depth + 1) for v in value)
    return value

  def get(self, name: str, arg: str, scope: str = ""):
    for key in ((scope, name, arg), ("", name, arg)):
      if key in self._values:
        return self.resolve(self._values[key])
    if arg in _DEFAULTS.get(name, {}):
      return _DEFAULTS[name][arg]
    raise UnsupportedMeliadConfig(
        f"meliad's {name}.{arg} is not bound and has no default (gin.REQUIRED): "
        "give meliad's base_htrans.gin, its size file and its variant's file, "
        "or its operative config.")


def _find_include(filename: str, search_paths) -> str:
  for base in ("", *search_paths):
    candidate = os.path.join(base, filename)
    if os.path.isfile(candidate):
      return candidate
  raise UnsupportedMeliadConfig(
      f"gin include {filename!r} not found in {list(search_paths) or ['.']}; "
      "pass meliad's transformer/configs directory as a search path.")


# --- the model config -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeliadRun:
  """What a meliad configuration says beyond the model: its segments."""
  sequence_length: int


def model_config(bindings: Bindings) -> tuple[ModelConfig, MeliadRun]:
  """The brt ModelConfig of the DecoderStack the bindings build."""
  get = bindings.get

  def refuse(setting, value, why):
    raise UnsupportedMeliadConfig(
        f"meliad's {setting} = {value!r}: {why}")

  def need(setting, value, wanted, why):
    if value != wanted:
      refuse(setting, value, why)

  # The stack.
  layer_factory = get("DecoderStack", "layer_factory")
  if not isinstance(layer_factory, _Reference) or (
      layer_factory.name != "TransformerLayer"):
    refuse("DecoderStack.layer_factory", layer_factory,
           "brt converts meliad's TransformerLayer stacks only.")
  num_layers = int(get("DecoderStack", "num_layers"))
  d_model = int(get("DecoderStack", "embedding_size"))
  for arg, why in (("use_absolute_positions", "brt has no absolute positions"),
                   ("use_final_layernorm", "brt always has the final norm"),
                   ("final_mlp_factory", "brt has no final MLP"),
                   ("memory_factory", "brt has no external (kNN) memory")):
    value = get("DecoderStack", arg)
    need(f"DecoderStack.{arg}", value, _DEFAULTS["DecoderStack"][arg], why)
  if tuple(get("DecoderStack", "memory_layer_indices")):
    refuse("DecoderStack.memory_layer_indices",
           get("DecoderStack", "memory_layer_indices"),
           "brt has no external (kNN) memory.")
  layer = lambda arg: get("TransformerLayer", arg, layer_factory.scope)
  window = int(layer("window_length"))
  recurrent = sorted({int(i) % num_layers
                      for i in get("DecoderStack", "recurrent_layer_indices")})
  dstack_window = int(get("DecoderStack", "dstack_window_length"))
  if dstack_window not in (0, window):
    refuse("DecoderStack.dstack_window_length", dstack_window,
           f"brt scans the stack over blocks of the layers' window "
           f"({window}); use 0 or {window}.")
  feedback = bool(recurrent and dstack_window and
                  get("DecoderStack", "feedback_recurrence"))

  # Attention and positions.
  need("TransformerLayer.relative_position_type",
       layer("relative_position_type"), "t5",
       "brt converts T5 relative positions only (meliad's rotary and Fourier "
       "positions are other tables).")
  need("TransformerLayer.use_causal_mask", layer("use_causal_mask"), True,
       "a language model needs the causal mask.")
  need("TransformerLayer.compute_importance", layer("compute_importance"),
       False, "brt has no importance-weighted attention.")
  need("TransformerLayer.memory_num_neighbors", layer("memory_num_neighbors"),
       0, "brt has no external (kNN) memory.")
  task = lambda arg: get("TransformerTaskConfig", arg)
  sequence_length = int(task("sequence_length"))
  xl = bool(layer("use_long_xl_architecture"))
  if not xl and sequence_length != window:
    refuse("TransformerLayer.use_long_xl_architecture", xl,
           "without the XL cache meliad needs window_length == "
           f"sequence_length, got {window} and {sequence_length}.")

  # The layers' MLPs and norms.
  base = lambda arg: get("TransformerBase", arg)
  need("TransformerBase.gate_type", base("gate_type"), "residual",
       "brt's token path is residual.")
  attn_mlp, ffn = base("attn_mlp_factory"), base("ffn_factory")
  for ref, setting in ((attn_mlp, "attn_mlp_factory"), (ffn, "ffn_factory")):
    if not isinstance(ref, _Reference) or ref.name != "MLP":
      refuse(f"TransformerBase.{setting}", ref, "brt converts meliad's MLPs.")
  mlp = lambda ref, arg: get("MLP", arg, ref.scope)
  need(f"{attn_mlp.scoped_name}.num_layers", mlp(attn_mlp, "num_layers"), 1,
       "the projection after attention is one product in brt.")
  need(f"{attn_mlp.scoped_name}.hidden_activation",
       mlp(attn_mlp, "hidden_activation"), None,
       "brt's projection after attention has no activation before it.")
  need(f"{ffn.scoped_name}.num_layers", mlp(ffn, "num_layers"), 2,
       "brt's MLP has one hidden layer.")
  activation = mlp(ffn, "hidden_activation")
  if activation not in _ACTIVATIONS:
    refuse(f"{ffn.scoped_name}.hidden_activation", activation,
           f"brt's MLP takes one of {_ACTIVATIONS}.")
  for ref in (attn_mlp, ffn):
    need(f"{ref.scoped_name}.final_activation", mlp(ref, "final_activation"),
         None, "brt's products have no final activation.")
  use_bias = bool(mlp(ffn, "use_bias"))
  need(f"{attn_mlp.scoped_name}.use_bias", bool(mlp(attn_mlp, "use_bias")),
       use_bias, f"brt's use_bias sets both MLPs' biases, and "
       f"{ffn.scoped_name}.use_bias = {use_bias}.")
  norm = lambda arg: get("LayerNorm", arg)
  for arg in ("use_scale", "enable_layernorm", "use_scalar_scale_bias"):
    need(f"LayerNorm.{arg}", norm(arg), _DEFAULTS["LayerNorm"][arg],
         "brt's norms have a learned scale per channel.")
  need("LayerNorm.epsilon", norm("epsilon"), 1e-6, "brt's norms use 1e-6.")
  if norm("use_mean"):
    need("LayerNorm.use_bias", norm("use_bias"), use_bias,
         "brt's LayerNorm has a bias exactly when its products do.")
  else:
    need("LayerNorm.use_bias", norm("use_bias"), False,
         "brt's scale-only norm has no bias.")

  # Dropout: one rate for meliad's pre-attention, post-FFN and final dropout.
  rate = float(base("dropout_rate"))
  if rate:
    for arg, wanted in (("pre_attn_dropout", True), ("post_attn_dropout", False),
                        ("pre_ffn_dropout", False), ("post_ffn_dropout", True)):
      need(f"TransformerBase.{arg}", base(arg), wanted,
           "brt drops out before the queries/keys/values and after the MLP.")
  final_rate = float(get("DecoderStack", "final_dropout_rate"))
  if final_rate != rate:
    refuse("DecoderStack.final_dropout_rate", final_rate,
           f"brt's dropout_rate is also the final one, and "
           f"TransformerBase.dropout_rate = {rate}.")

  # The recurrent cell.
  gate_type = layer("recurrent_gate_type")
  single, skip = bool(layer("recurrent_single_gate")), bool(
      layer("recurrent_skip_ffn"))
  states = int(layer("recurrent_num_states"))
  if recurrent:
    if gate_type not in _GATES:
      refuse("TransformerLayer.recurrent_gate_type", gate_type,
             f"brt's gates are meliad's {sorted(_GATES)}.")
    if single and skip:
      refuse("TransformerLayer.recurrent_single_gate", single,
             "meliad itself refuses the single gate without its FFN.")
    if states <= 0:
      refuse("TransformerLayer.recurrent_num_states", states,
             "a recurrent layer needs states.")
  dtype = layer("dtype")
  dtype = getattr(dtype, "__name__", dtype)
  if str(dtype) not in _DTYPES:
    refuse("TransformerLayer.dtype", dtype, f"brt takes {sorted(_DTYPES)}.")

  cfg = ModelConfig(
      vocab_size=int(task("vocab_size")), num_layers=num_layers,
      d_model=d_model, num_heads=int(layer("num_heads")),
      head_dim=int(layer("head_size")),
      mlp_dim=int(mlp(ffn, "num_hidden_units")), block_width=window,
      recurrent_layers=tuple(recurrent),
      num_states=states if recurrent else ModelConfig.num_states,
      gate=_GATES.get(gate_type, "fixed"),
      gate_variant="skip" if skip else "single" if single else "dual",
      feedback=feedback, state_reads_previous_block=True,
      cache_across_segments=xl, empty_cache="zeros" if xl else "masked",
      window="sliding", position="t5", num_position_buckets=32,
      max_position_distance=128, qk_norm=bool(base("normalize_keys")),
      qk_scale_init=1.0, norm="layer" if norm("use_mean") else "rms",
      mlp_activation=activation, use_bias=use_bias, tie_embeddings=True,
      dropout_rate=rate,
      attention_dropout_rate=float(layer("attn_dropout_rate")),
      fixed_gate_bias_init=0.0, fixed_gate_bias_std=0.1, state_init_std=0.1,
      dtype=_DTYPES[str(dtype)])
  cfg.check_segment_length(sequence_length)
  return cfg, MeliadRun(sequence_length)


# --- parameters -------------------------------------------------------------


def _flatten(tree: Mapping, prefix=()) -> dict[tuple[str, ...], np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = np.asarray(value, np.float32)
  return out


def decoder_params(tree: Mapping) -> Mapping:
  """The DecoderStack's parameters in a meliad tree: a training checkpoint
  ({"optimizer": {"target": ...}}), model variables ({"params": ...}), the
  language model's ({"decoder": ...}) or the stack's own."""
  for key in ("optimizer", "target", "params", "decoder"):
    if isinstance(tree, Mapping) and key in tree and isinstance(
        tree[key], Mapping):
      if key == "optimizer" and "target" not in tree[key]:
        continue
      tree = tree[key]
  if not (isinstance(tree, Mapping) and "embed" in tree):
    raise UnsupportedMeliadConfig(
        "not a meliad DecoderStack parameter tree: no 'embed' at its top "
        f"(found {sorted(tree)[:8] if isinstance(tree, Mapping) else type(tree)}).")
  return tree


class _Taker:
  """Takes meliad's leaves by path, each exactly once."""

  def __init__(self, flat):
    self.flat = dict(flat)

  def __call__(self, *path):
    if path not in self.flat:
      raise UnsupportedMeliadConfig(
          f"meliad parameter {'/'.join(path)} is missing: the parameters do "
          "not match the gin config (variant, gate or layer count).")
    return self.flat.pop(path)

  def maybe(self, *path):
    return self.flat.pop(path) if path in self.flat else None


def convert_params(cfg: ModelConfig, params: Mapping) -> dict:
  """brt's parameter tree for `cfg` from a meliad DecoderStack's."""
  take = _Taker(_flatten(decoder_params(params)))
  h, k, d = cfg.num_heads, cfg.head_size, cfg.d_model
  heads = lambda kernel: kernel.reshape(kernel.shape[0], h, k)  # (d, H, k)
  stack = lambda *kernels: np.stack([heads(x) for x in kernels], axis=1)

  def biased(prefix, kernel):
    out = {"kernel": kernel}
    if cfg.use_bias:
      out["bias"] = take(*prefix, "bias")
    return out

  def mlp(prefix, in_shape=(d,)):
    wi = take(*prefix, "hidden0", "kernel")
    return {"wi": biased(prefix + ("hidden0",),
                         wi.reshape(in_shape + (cfg.mlp_size,))),
            "wo": biased(prefix + ("output_layer",),
                         take(*prefix, "output_layer", "kernel"))}

  def gate(prefix, in_shape):
    if cfg.gate == "fixed":
      return {"bias": take(*prefix, "gate_bias")}
    kernels = [take(*prefix, g, "kernel").reshape(in_shape + (d,))
               for g in ("input_gate", "forget_gate")]
    biases = [take(*prefix, g, "bias") for g in ("input_gate", "forget_gate")]
    return {"proj": {"kernel": np.stack(kernels, axis=-2),
                     "bias": np.stack(biases)}}

  def norm(*path):
    out = {"scale": take(*path, "scale")}
    if cfg.norm == "layer" and cfg.use_bias:
      out["bias"] = take(*path, "bias")
    return out

  blocks, out = {}, {"embed": {"embedding": take("embed", "embedding")},
                     "ln_final": norm("final_layernorm")}
  for i in range(cfg.num_layers):
    t = (f"transformer{i}",)
    tb, kvq = t + ("tbase",), t + ("tbase", "_kvq")
    reads = cfg.layer_reads_state(i)
    queries = [take(*kvq, "queries_layer", "kernel")]
    if reads:
      queries.append(take(*kvq, "queries2_layer", "kernel"))
    num_q = len(queries)
    layer = {
        "ln_tokens": norm(*kvq, "pre_attn_layernorm"),
        "q_tokens": {"kernel": stack(*queries)},
        "kv_tokens": {"kernel": stack(take(*kvq, "keys_layer", "kernel"),
                                      take(*kvq, "values_layer", "kernel"))},
        "out_tokens": biased(tb + ("post_attn_mlp", "output_layer"), take(
            *tb, "post_attn_mlp", "output_layer", "kernel").reshape(
                num_q, h, k, d)),
        "ln_mlp": norm(*tb, "pre_ffn_layernorm"),
        "mlp": mlp(tb + ("ffn",)),
    }
    if cfg.qk_norm:
      layer["scale_self"] = take(*kvq, "attention_scale")
      if reads:
        layer["scale_read"] = take(*tb, "attention_scale2")
    if i in cfg.recurrent_layers:
      rb, rkvq = t + ("recurrent_tbase",), t + ("recurrent_tbase", "_kvq")
      attended = (2, h, k)
      layer.update({
          "ln_state": norm(*rkvq, "pre_attn_layernorm"),
          "kv_state": {"kernel": stack(take(*rkvq, "keys_layer", "kernel"),
                                       take(*rkvq, "values_layer", "kernel"))},
          "state_ids": take(*rkvq, "position_embeddings"),
          "q_state": {"kernel": stack(take(*rkvq, "queries_layer", "kernel"),
                                      take(*rkvq, "queries2_layer", "kernel"))},
      })
      if cfg.qk_norm:
        layer["scale_state_self"] = take(*rkvq, "attention_scale")
        layer["scale_state_tokens"] = take(*rb, "attention_scale2")
      if cfg.gate_variant == "single":
        layer["mlp_state"] = mlp(rb + ("ffn",), attended)
        layer["gate"] = gate(rb + ("ffn",), (cfg.mlp_size,))
      else:
        proj = rb + ("post_attn_mlp",)
        layer["out_state"] = biased(proj + ("output_layer",), take(
            *proj, "output_layer", "kernel").reshape(attended + (d,)))
        layer["gate"] = gate(proj, attended)
      if cfg.gate_variant == "dual":
        layer["ln_mlp_state"] = norm(*rb, "pre_ffn_layernorm")
        layer["mlp_state"] = mlp(rb + ("ffn",))
        layer["gate_mlp"] = gate(rb + ("ffn",), (cfg.mlp_size,))
      blocks[f"initial_state_{i}"] = take(*t, "recurrent_initial_state")
    blocks[f"layer_{i}"] = layer
    out[f"relpos_{i}"] = {"table": take(
        *t, "relative_positions", "rel_embedding").T}
  out["blocks"] = blocks
  if take.flat:
    names = sorted("/".join(p) for p in take.flat)
    raise UnsupportedMeliadConfig(
        f"meliad parameters brt has no place for: {names[:12]}: the gin "
        "config does not describe these parameters (another variant, or an "
        "option brt does not have).")
  _check_shapes(cfg, out)
  return out


def _check_shapes(cfg: ModelConfig, params: dict) -> None:
  import flax
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from brt.model import BlockRecurrentTransformer, initial_carry
  model = BlockRecurrentTransformer(cfg)
  tokens = jnp.zeros((1, cfg.block_width), jnp.int32)
  want = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                      tokens, initial_carry(cfg, 1)))["params"]
  want = flax.traverse_util.flatten_dict(want, sep="/")
  got = flax.traverse_util.flatten_dict(params, sep="/")
  if want.keys() != got.keys():
    raise UnsupportedMeliadConfig(
        f"converted parameters do not match brt's model: missing "
        f"{sorted(want.keys() - got.keys())[:8]}, extra "
        f"{sorted(got.keys() - want.keys())[:8]}.")
  bad = [f"{n}: meliad {got[n].shape}, brt {want[n].shape}" for n in want
         if tuple(got[n].shape) != tuple(want[n].shape)]
  if bad:
    raise UnsupportedMeliadConfig(
        "meliad parameters of the wrong shape for the gin config: "
        + "; ".join(bad[:6]))


def convert(params: Mapping, gin_text: str | Sequence[str],
            search_paths: Sequence[str] = ()) -> tuple[ModelConfig, dict]:
  """(brt ModelConfig, variables) of the meliad DecoderStack that `gin_text`
  (meliad's operative config, or its gin files' text and bindings, later
  ones winning) builds and `params` holds."""
  texts = [gin_text] if isinstance(gin_text, str) else list(gin_text)
  cfg, _ = model_config(Bindings(texts, search_paths))
  return cfg, {"params": convert_params(cfg, params)}


# --- checkpoints and the command --------------------------------------------


def read_checkpoint(path: str) -> Mapping:
  """A meliad (flax) checkpoint as a nested dict: the file `checkpoint_N`,
  or the newest one in a directory."""
  if os.path.isdir(path):
    found = [(int(m.group(1)), name) for name in os.listdir(path)
             if (m := re.fullmatch(r"checkpoint_(\d+)", name))]
    if not found:
      raise FileNotFoundError(
          f"No meliad checkpoint (checkpoint_<step>) in {path}.")
    path = os.path.join(path, max(found)[1])
  from flax import serialization
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def _bindings_text(cfg: ModelConfig, run: MeliadRun) -> str:
  lines = ["# Converted from a meliad checkpoint by brt.meliad."]
  for field in dataclasses.fields(ModelConfig):
    value = getattr(cfg, field.name)
    lines.append(f"ModelConfig.{field.name} = {_gin_value(value)}")
  lines.append(f"TrainConfig.segment_length = {run.sequence_length}")
  return "\n".join(lines) + "\n"


def _gin_value(value) -> str:
  if isinstance(value, tuple):
    return "[" + ", ".join(_gin_value(v) for v in value) + "]"
  return repr(value)


def write_workdir(workdir: str, cfg: ModelConfig, variables: dict,
                  run: MeliadRun, brt_gin_files: Sequence[str] = (),
                  gin_params: Sequence[str] = ()) -> str:
  """A brt workdir holding the converted model as its step-0 checkpoint,
  and its operative config.gin; returns the checkpoint's directory."""
  import jax
  from brt import configurables
  from brt.experiment import CONFIG_FILE, prepare_workdir
  from brt.optim import OptimizerConfig
  from brt.trainer import TrainConfig, Trainer
  workdir = prepare_workdir(workdir)
  converted = os.path.join(workdir, "meliad_bindings.gin")
  with open(converted, "w") as f:
    f.write(_bindings_text(cfg, run))
  configurables.parse([*brt_gin_files, converted], gin_params)
  model_cfg = configurables.build(ModelConfig)
  try:  # The task, if the brt gin files name one: into the operative config.
    configurables.build(configurables.DataConfig)
  except TypeError:
    pass  # No task: give its gin file to --mode=eval with the workdir's.
  if model_cfg != cfg:
    differ = [f.name for f in dataclasses.fields(ModelConfig)
              if getattr(model_cfg, f.name) != getattr(cfg, f.name)]
    raise ValueError(f"--gin_param changes the converted model ({differ}); "
                     "change the meliad config instead.")
  trainer = Trainer(cfg, configurables.build(TrainConfig),
                    configurables.build(OptimizerConfig), workdir,
                    verbose=False)
  try:
    state = trainer.init_state()
    params = jax.tree_util.tree_map(
        lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding),
        variables["params"], state.params)
    state = state.replace(params=params)
    if trainer.checkpointer.latest_step() is not None:
      raise FileExistsError(
          f"{trainer.checkpointer.directory} already holds checkpoints; "
          "convert into a fresh --workdir.")
    # No data position: a run resuming from here starts its data afresh.
    trainer.checkpointer.save(0, state, {}, cfg)
    trainer.checkpointer.wait()
  finally:
    trainer.close()
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(configurables.operative_config())
  return trainer.checkpointer.directory


def main(argv) -> None:
  del argv
  from absl import flags
  from brt import startup
  startup.quiet_tensorflow()
  f = flags.FLAGS
  texts = []
  for name in f.gin_file:
    texts.append(f"include {name!r}")
  texts += list(f.gin_param)
  bindings = Bindings(["\n".join(texts)], f.gin_search_paths)
  cfg, run = model_config(bindings)
  params = convert_params(cfg, read_checkpoint(f.checkpoint))
  where = write_workdir(f.workdir, cfg, {"params": params}, run,
                        f.brt_gin_file, f.brt_gin_param)
  print(f"wrote {where}/0: {cfg.num_layers} layers, d_model {cfg.d_model}, "
        f"recurrent layers {list(cfg.recurrent_layers)}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "meliad workdir or checkpoint file.",
                      required=True)
  flags.DEFINE_multi_string("gin_file", [], "meliad gin files, in order.")
  flags.DEFINE_multi_string("gin_param", [], "meliad gin bindings.")
  flags.DEFINE_list("gin_search_paths", [],
                    "Where meliad's gin files are (its transformer/configs).")
  flags.DEFINE_string("workdir", None, "The brt workdir to write.",
                      required=True)
  flags.DEFINE_multi_string(
      "brt_gin_file", [], "brt gin files for the new workdir (e.g. its task, "
      "tasks/pg19_tokens.gin).")
  flags.DEFINE_multi_string("brt_gin_param", [],
                            "brt bindings for the new workdir.")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
