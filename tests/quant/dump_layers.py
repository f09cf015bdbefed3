# Dumps real linear-layer weights and their input activations for the opt-in layer-wise study
# (tests/quant/test_residual.cpp, Mosaic.DISABLED_RealLayerStudy). Needs torch + transformers.
#   python3 tests/quant/dump_layers.py MODEL_DIR OUT_DIR [CALIB_TEXT]
# Calibration text defaults to the GPL-3 licence text; evaluation activations come from the first
# 40k characters of WikiText-2 test (only layer errors are measured, no perplexity).
import sys, torch, numpy as np, os
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2)
m = sys.argv[1]
tok = AutoTokenizer.from_pretrained(m)
model = AutoModelForCausalLM.from_pretrained(m, torch_dtype=torch.float32).eval()
cal = open(sys.argv[3] if len(sys.argv) > 3 else "/usr/share/common-licenses/GPL-3").read()
ev = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../shared/data/wikitext-2-raw/wiki.test.raw")).read()[:40000]
def chunks(text, n, L):
    ids = tok(text, return_tensors="pt").input_ids[0]
    return [ids[i*L:(i+1)*L].unsqueeze(0) for i in range(min(n, len(ids)//L))]
names = ["model.layers.5.self_attn.q_proj", "model.layers.5.self_attn.o_proj",
         "model.layers.15.mlp.up_proj", "model.layers.15.mlp.down_proj",
         "model.layers.25.self_attn.v_proj", "model.layers.25.mlp.down_proj"]
mods = dict(model.named_modules())
store = {}
def hook(name):
    def f(mod, inp, out):
        store.setdefault(name, []).append(inp[0].reshape(-1, inp[0].shape[-1]).detach().float().numpy())
    return f
hs = [mods[n].register_forward_hook(hook(n)) for n in names]
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
for tag, text, n in [("cal", cal, 8), ("eval", ev, 4)]:
    store.clear()
    with torch.no_grad():
        for c in chunks(text, n, 512):
            model(c)
    for name in names:
        X = np.concatenate(store[name]).astype(np.float32)
        X.tofile(f"{out}/{name}.{tag}.f32")
        print(name, tag, X.shape)
with open(f"{out}/meta.txt", "w") as fh:
    for name in names:
        W = mods[name].weight.detach().float().numpy().astype(np.float32)
        W.tofile(f"{out}/{name}.W.f32")
        mc = os.path.getsize(f"{out}/{name}.cal.f32") // (4 * W.shape[1])
        me = os.path.getsize(f"{out}/{name}.eval.f32") // (4 * W.shape[1])
        fh.write(f"{name} {W.shape[0]} {W.shape[1]} {mc} {me}\n")
print(open(f"{out}/meta.txt").read())
