"""GPT-2-small-sized model (768 wide, 12 layers, 12 heads) on TinyStories, for a GPU.

  python train.py --config=configs/small.py

Needs the full dataset: `python data.py --dataset=tinystories --out_dir=data/tinystories`.
"""
from configs import tinystories_h100


def get_config():
  config = tinystories_h100.get_config()  # same data and schedule as the speedrun.
  m = config.model
  m.d_model = 768
  m.n_layers = 12
  m.n_heads = 12
  m.d_ff = 3072
  # The bf16 residual stream was checked at the speedrun's 4 layers only; 12 keep the fp32 one.
  m.residual_dtype = "float32"
  # Likewise the FP8 MLP (fp8_mlp.py): its loss was checked at the speedrun's shape only.
  m.mlp_fp8 = False
  m.mlp_fp8_w2 = False  # (unused without mlp_fp8; off so the saved config says what ran)
  m.mlp_fp8_wgrad = False  # (likewise)
  m.mlp_fp8_wgrad_w2 = False  # (likewise)
  m.mlp_fp8_h13 = False  # (likewise)
  m.mlp_fp8_da = False  # (likewise)
  m.attn_fp8 = False  # the attention's x Wqkv in the compute dtype, as the MLP's.
  m.attn_fp8_dqkv = False  # with attn_fp8: its backward dots in FP8 too (e5m2 dQKV from the attention)
  m.head_fp8 = False  # the LM head's forward logits too.
  config.train.lr = 6e-4  # wider models want a lower peak learning rate.
  config.train.min_lr = 6e-5
  config.train.target_val_loss = 0.0
  # optimizer / muon_* come from the speedrun config: Muon's update is scaled to AdamW's RMS
  # (muon.py), so the lr above serves both; try --config.train.optimizer=muon.
  return config
