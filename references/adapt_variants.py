"""Dev-split experiments behind ``--adapt`` (references/adapt.md): each variant adapts crvos (shipped weights)
to every dev sequence's first frame and scores the split with ``vostool.eval``.

Usage (from the repository root, one process at a time, appends a JSON line to $ADAPT_RESULTS):
    DAVIS_ROOT=../shared/data/DAVIS2016-train python references/adapt_variants.py NAME 'JSON_PARAMS'
e.g. '{"variant":"target","mode":"suppress","bias":2.0,"n_aug":8}' or
     '{"variant":"finetune","deform":2,"lr":1e-4,"steps":40,"batch":4}'.
This is an experiment script: it may use the engine's internals; the shipped form is vostool/engine/adapt.py.
"""
import copy, json, os, sys, time
import cv2, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from vostool.engine import Propagator, load_model
from vostool.engine.device import autocast
from vostool.eval.api import evaluate_davis

DEV = ["bmx-bumps", "car-turn", "dance-jump", "horsejump-low", "kite-walk"]
name = sys.argv[1]
P = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
MODEL = P.get("model", "crvos")


def augment(img, ids, rng, strong=1.0):
    h, w = ids.shape
    s = float(np.exp(rng.uniform(-0.2, 0.2) * strong))
    ang = float(rng.uniform(-15, 15) * strong)
    tx, ty = rng.uniform(-0.1, 0.1, 2) * np.array([w, h]) * strong
    m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, s)
    m[:, 2] += (tx, ty)
    if rng.random() < 0.5:
        m = np.array([[-1, 0, w - 1], [0, 1, 0]], np.float64) @ np.vstack([m, [0, 0, 1]])
    a = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    b = cv2.warpAffine(ids, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = a.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.8, 1.2) + mean
    return np.clip(a, 0, 255).astype(np.uint8), b


def deform(m, rng, level):
    """m: h x w float {0,1} -> deformed previous mask"""
    h, w = m.shape
    out = m.copy()
    if level >= 1:
        ys, xs = np.nonzero(m > 0.5)
        size = max(4, int(np.sqrt(len(ys)) if len(ys) else 8))
        dx, dy = rng.normal(0, 0.15 * size, 2)
        M = np.float32([[1, 0, dx], [0, 1, dy]])
        out = cv2.warpAffine(out, M, (w, h), flags=cv2.INTER_NEAREST)
        k = int(rng.integers(1, max(2, size // 6)))
        ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        out = cv2.dilate(out, ker) if rng.random() < 0.5 else cv2.erode(out, ker)
    if level >= 2 and rng.random() < P.get("p_blob", 0.7):
        # distractor: a copy of the object's mask pasted elsewhere (where there is no object)
        ys, xs = np.nonzero(m > 0.5)
        if len(ys):
            dx, dy = rng.uniform(-0.5, 0.5) * w, rng.uniform(-0.5, 0.5) * h
            M = np.float32([[1, 0, dx], [0, 1, dy]])
            out = np.maximum(out, cv2.warpAffine(m, M, (w, h), flags=cv2.INTER_NEAREST))
        if rng.random() < 0.5:  # random ellipse blob
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            cv2.ellipse(out, (int(cx), int(cy)), (int(rng.uniform(5, w / 6)), int(rng.uniform(5, h / 6))), 0, 0, 360, 1.0, -1)
    return out.astype(np.float32)


class AdaptProp:
    def __init__(self):
        self.model = load_model(MODEL)
        self.prop = Propagator(self.model, size=P.get("size") or __import__("vostool.models", fromlist=["x"]).recommended_size(self.model))
        self.pristine = copy.deepcopy(self.model.state_dict())
        self.device_name, self.precision = self.prop.device_name, self.prop.precision
        self.adapt_s = []
        self.seq = 0

    def _pool(self, image, mask, n, strong=1.0):
        prop = self.prop
        h, w = mask.shape
        lane = prop._make_lane(h, w, 1.0)
        rng = np.random.default_rng(P.get("seed", 0) + self.seq)
        ids = [int(i) for i in np.unique(mask) if i]
        xs, fs, ms = [], [], []
        for j in range(n):
            img, m = (image, mask) if j == 0 else augment(image, mask, rng, strong)
            with torch.no_grad():
                x, feats = prop._encode(img, lane)
            mk = torch.from_numpy(np.stack([m == i for i in ids]).astype(np.float32))[:, None]
            mk = prop._pad(prop._to_lane(mk, lane), lane)
            xs.append(x); fs.append({k: v.detach() for k, v in feats.items()}); ms.append(mk)
        return lane, xs, fs, ms, rng

    def start(self, image, mask):
        self.model.load_state_dict(self.pristine)
        self.model.__dict__.pop("predict", None)
        t0 = time.perf_counter()
        v = P.get("variant", "none")
        if v in ("finetune", "target+finetune"):
            self._finetune(image, mask)
        if v in ("target", "target+finetune"):
            self._target(image, mask)
        self.adapt_s.append(time.perf_counter() - t0)
        self.seq += 1
        return self.prop.start(image, mask)

    def step(self, image):
        return self.prop.step(image)

    # ---- (c) target model
    def _tfeat(self, feats):
        s16 = feats["s16"][:1].float()
        parts = [s16]
        if P.get("s8", True):
            parts.append(F.avg_pool2d(feats["s8"][:1].float(), 2))
        return torch.cat(parts, 1)

    def _target(self, image, mask):
        lane, xs, fs, ms, rng = self._pool(image, mask, P.get("n_aug", 12), P.get("strong", 1.0))
        X = torch.cat([self._tfeat(f) for f in fs])  # N x C x h x w
        Y = torch.cat([F.avg_pool2d(m, 16).transpose(0, 1) for m in ms])  # N x K x h x w
        mu = X.mean((0, 2, 3), keepdim=True); sd = X.std((0, 2, 3), keepdim=True) + 1e-3
        Xn = (X - mu) / sd
        K, C = Y.shape[1], X.shape[1]
        ks = P.get("ksize", 1)
        head = nn.Conv2d(C, K, ks, padding=ks // 2)
        nn.init.zeros_(head.weight); nn.init.zeros_(head.bias)
        opt = torch.optim.Adam(head.parameters(), lr=P.get("t_lr", 0.01), weight_decay=0)
        pos = Y.mean((0, 2, 3)).clamp(1e-3, 1)
        pw = ((1 - pos) / pos).clamp(max=P.get("pw_max", 1.0)).view(1, K, 1, 1)  # default: no reweight
        lam = P.get("l2", 1e-3)
        with torch.enable_grad():
            for it in range(P.get("t_steps", 100)):
                z = head(Xn)
                wgt = 1 + (pw - 1) * Y
                loss = F.binary_cross_entropy_with_logits(z, Y, weight=wgt) + lam * head.weight.pow(2).sum()
                opt.zero_grad(); loss.backward(); opt.step()
        self.tloss = float(loss)
        head.requires_grad_(False)
        alpha, mode, bias = P.get("alpha", 1.0), P.get("mode", "add"), P.get("bias", 0.0)
        orig = type(self.model).predict.__get__(self.model)
        me = self

        def predict(image, feats, state):
            logits = orig(image, feats, state).float()
            k = logits.shape[0]
            s = head((me._tfeat(feats) - mu) / sd)[0, :, None][:k] + bias  # K x 1 x h x w
            s = F.interpolate(s, logits.shape[-2:], mode="bilinear", align_corners=False)
            if mode == "suppress":
                s = s.clamp(max=0)
            elif mode == "gate":  # multiply fg prob by sigmoid(s): log p' = log p + logsigmoid(s)
                p = torch.log_softmax(logits, 1)
                fg = p[:, 1:2] + F.logsigmoid(s)
                bg = torch.log1p(-fg.exp().clamp(max=1 - 1e-6))
                return torch.cat([bg, fg], 1)
            d = alpha * s
            return torch.cat([logits[:, :1] - d / 2, logits[:, 1:2] + d / 2], 1)

        self.model.predict = predict

    # ---- (a)/(b) fine-tune decoder
    def _finetune(self, image, mask):
        lane, xs, fs, ms, rng = self._pool(image, mask, P.get("n_aug_ft", 8), P.get("strong", 1.0))
        model = self.model
        train_enc = P.get("train_enc", False)
        params = [p for n, p in model.named_parameters() if train_enc or not n.startswith("encoder.")]
        opt = torch.optim.Adam(params, lr=P.get("lr", 1e-4))
        level = P.get("deform", 0)
        B = P.get("batch", 4)
        N = len(fs)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        losses = []
        with torch.enable_grad():
            for it in range(P.get("steps", 50)):
                imgs, feats, prev, tgt = [], [], [], []
                for b in range(B):
                    j = int(rng.integers(N))
                    k = int(rng.integers(ms[j].shape[0]))
                    t = ms[j][k, 0].numpy()
                    if level == 0:  # two-copy clip: previous mask of another copy
                        i = int(rng.integers(N))
                        pm = ms[i][k, 0].numpy()
                    else:
                        pm = deform((t > 0.5).astype(np.float32), rng, level)
                    imgs.append(xs[j]); feats.append(fs[j])
                    prev.append(torch.from_numpy(pm)[None, None]); tgt.append(torch.from_numpy((t > 0.5).astype(np.int64))[None])
                img = torch.cat(imgs)
                ft = {n: torch.cat([f[n] for f in feats]) for n in feats[0]}
                pv = torch.cat(prev); tg = torch.cat(tgt)
                with autocast(self.prop.device, self.prop.precision):
                    st = model.init_state(img, ft, pv)
                    logits = model.predict(img, ft, st)
                loss = model.loss(logits[:, None], tg[:, None])
                opt.zero_grad(); loss.backward(); opt.step()
                losses.append(float(loss))
        model.eval()
        self.ft_loss = (np.mean(losses[:5]), np.mean(losses[-5:]))


if __name__ == '__main__':
    ap = AdaptProp()
    t0 = time.time()
    rep = evaluate_davis(os.environ.get("DAVIS_ROOT", "../shared/data/DAVIS2016-train"), year=2016, split="train", sequences=DEV,
                         propagator_factory=lambda: ap, out_dir=f"/tmp/ev_{name}")
    r = rep.result
    g = rep.payload()
    per = {s["sequence"]: round(s["J&F-Mean"], 3) for s in g["per_sequence"]}
    line = {"name": name, "params": P, "J&F": round(g["J&F-Mean"], 4), "J": round(g["J-Mean"], 4), "F": round(g["F-Mean"], 4),
            "per_seq": per, "adapt_s": [round(a, 1) for a in ap.adapt_s], "wall": round(time.time() - t0),
            "ft_loss": getattr(ap, "ft_loss", None)}
    print(json.dumps(line))
    open(os.environ.get("ADAPT_RESULTS", "runs/adapt_variants.jsonl"), "a").write(json.dumps(line) + "\n")
