"""Serving: the prediction logic, the model store contract, and a real `bentoml serve` answering HTTP.

One server (module scope) serves a tiny untrained model from an isolated BentoML store; tests marked
`media` send it the real footage in ../shared/media and are skipped without it. The bad-input matrix,
the concurrent burst and the bento build use synthetic files, so they run anywhere.
"""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from serving.inference import Predictor, ThreadTuner, video_detector
from serving.inputs import ServingError, as_pixels, decode_compact, decode_for_timeline, encode_compact
from serving.planning import plan_segments
from serving.settings import ServingSettings
from serving_helpers import (LABELS, ServiceProcess, bentoml_cli, encode_video, env_for, make_checkpoint,
                             plain_frames, store_model, synthetic_face_frames, synthetic_face_image,
                             unsupported_codec_avi, write_mp4v)

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
UPLOAD_LIMIT_MB = 3
MAX_SECONDS = 12


def real_media(test):
    """Mark a test that reads ../shared/media; skip it cleanly where that folder is absent."""
    return pytest.mark.media(pytest.mark.skipif(not MEDIA.is_dir(), reason=f"no footage at {MEDIA}")(test))


# ----------------------------------------------------------------------------------- settings, planning
def test_settings_from_env():
    assert ServingSettings.from_env({}) == ServingSettings()
    s = ServingSettings.from_env({"S4D_MAX_UPLOAD_MB": "2.5", "S4D_MAX_SECONDS": "30", "S4D_UNCERTAIN_THRESHOLD": "0.3",
                                  "S4D_DETECT_EVERY": "2", "S4D_FACE_DETECTOR": "yunet", "S4D_BATCH_MAX_SIZE": ""})
    assert (s.max_upload_bytes, s.max_seconds, s.uncertain_threshold, s.detect_every, s.detector) == \
        (int(2.5 * 2**20), 30.0, 0.3, 2, "yunet")
    assert s.batch_max_size == ServingSettings().batch_max_size  # empty = default
    for env, name in [({"S4D_MAX_SECONDS": "ten"}, "S4D_MAX_SECONDS"), ({"S4D_UNCERTAIN_THRESHOLD": "1.5"},
                      "S4D_UNCERTAIN_THRESHOLD"), ({"S4D_DEVICE": "tpu"}, "S4D_DEVICE")]:
        with pytest.raises(ValueError, match=name):
            ServingSettings.from_env(env)
    assert {d["env"] for d in ServingSettings.describe()} == set(ServingSettings().as_env())


def test_plan_segments_cover_the_video():
    segments = plan_segments(total=300, fps=30.0, num_frames=8, stride=2, segment_seconds=1.0, max_segments=30)
    assert len(segments) == 10
    assert segments[0].t_start == 0.0 and segments[-1].t_end == pytest.approx(10.0)
    for a, b in zip(segments, segments[1:]):
        assert a.t_end == pytest.approx(b.t_start)
    for s in segments:
        assert len(s.frames) == 8 and np.all(np.diff(s.frames) == 2)
        assert s.t_start * 30 <= s.frames.mean() <= s.t_end * 30  # the clip sits inside its segment
    assert len(plan_segments(3000, 30.0, 8, 2, 1.0, 30)) == 30  # capped: longer segments instead
    short = plan_segments(5, 25.0, 8, 2, 1.0, 30)  # shorter than one clip: the last frame repeats
    assert len(short) == 1 and short[0].frames.tolist() == [0, 2, 4, 4, 4, 4, 4, 4]
    assert plan_segments(0, 25.0, 8, 2, 1.0, 30) == []


# ------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("suffix, codec", [("mp4", "libx264"), ("mkv", "libx264"), ("webm", "libvpx"),
                                           ("avi", "mpeg4"), ("mov", "libx264")])
def test_decode_containers(tmp_path, suffix, codec):
    frames = plain_frames(3.0, fps=20.0)
    path = encode_video(tmp_path / f"clip.{suffix}", frames, fps=20.0, codec=codec)
    video = decode_for_timeline(path, num_frames=8, stride=2, settings=ServingSettings())
    assert video.fps == pytest.approx(20.0) and abs(video.total_frames - 60) <= 1
    assert len(video.segments) == 3 and (video.width, video.height) == (96, 64)
    wanted = {int(i) for s in video.segments for i in s.frames}
    assert wanted == set(video.frames)  # only the timeline's frames were kept


def test_decode_refuses_with_named_problems(tmp_path):
    settings = ServingSettings(max_seconds=5.0, max_upload_mb=1.0)
    cases = {
        "empty": (tmp_path / "empty.mp4", b""),
        "not_media": (tmp_path / "noise.mp4", np.random.default_rng(0).bytes(50_000)),
        "too_large": (tmp_path / "big.mp4", np.random.default_rng(1).bytes(2 * 2**20)),
    }
    for code, (path, data) in cases.items():
        path.write_bytes(data)
        with pytest.raises(ServingError) as err:
            decode_for_timeline(path, 8, 2, settings, name=path.name)
        assert err.value.code == code and path.name in err.value.message
    long = write_mp4v(tmp_path / "long.mp4", plain_frames(8.0, fps=10.0), fps=10.0)
    with pytest.raises(ServingError, match="8.0 s, longer than the limit of 5 s") as err:
        decode_for_timeline(long, 8, 2, settings)
    assert err.value.code == "too_long" and err.value.status == 422
    with pytest.raises(ServingError) as err:
        decode_for_timeline(unsupported_codec_avi(tmp_path / "odd.avi"), 8, 2, settings)
    assert err.value.code == "unsupported_codec" and err.value.status == 415


def test_decode_truncated(tmp_path):
    data = encode_video(tmp_path / "full.mp4", plain_frames(4.0, fps=25.0), fps=25.0, faststart=True).read_bytes()
    for fraction in (0.1, 0.5):  # index up front, half the frames missing: refused, not guessed from
        cut = tmp_path / f"cut{fraction}.mp4"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ServingError) as err:
            decode_for_timeline(cut, 8, 2, ServingSettings())
        assert err.value.code == "unreadable" and err.value.status == 422
    data = write_mp4v(tmp_path / "tail_index.mp4", plain_frames(2.0)).read_bytes()  # index at the end
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(ServingError) as err:
        decode_for_timeline(tmp_path / "cut.mp4", 8, 2, ServingSettings())
    assert err.value.code == "unreadable"


# ------------------------------------------------------------------------------------------ predictor
class StubDetector:
    """Finds one face in the middle of every frame whose top-left pixel is not black."""

    backend = "stub"

    def detect(self, frames):
        from s4d.data.faces import Detections

        out = []
        for frame in frames:
            if frame[0, 0].max() < 20:
                out.append(Detections(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32),
                                      np.zeros(0, np.float32)))
                continue
            h, w = frame.shape[:2]
            x1, y1, s = w * 0.3, h * 0.25, min(w, h) * 0.4
            marks = [[x1 + 0.3 * s, y1 + 0.4 * s], [x1 + 0.7 * s, y1 + 0.4 * s], [x1 + 0.5 * s, y1 + 0.6 * s],
                     [x1 + 0.35 * s, y1 + 0.8 * s], [x1 + 0.65 * s, y1 + 0.8 * s]]
            out.append(Detections(np.array([[x1, y1, x1 + s, y1 + s]], np.float32),
                                  np.array([marks], np.float32), np.array([0.99], np.float32)))
        return out


@pytest.fixture(scope="module")
def micro_predictor():
    from s4d.config import tiny_profile
    from s4d.models.classifier import S4DClassifier
    import dataclasses
    import torch

    cfg = dataclasses.replace(tiny_profile(), img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2)
    torch.manual_seed(0)
    model = S4DClassifier(cfg, 3, 3)
    return Predictor(model, {"dynamic": ["a", "b", "c"], "static": ["x", "y", "z"]},
                     ServingSettings(uncertain_threshold=0.5), detector=StubDetector(), info={"tag": "m:1"})


def test_predict_video_answer(tmp_path, micro_predictor):
    frames = plain_frames(4.0, fps=20.0, size=(160, 120))
    frames[60:, :, :] = 0  # the last second is black: no face there
    path = encode_video(tmp_path / "clip.mp4", frames, fps=20.0)
    answer = micro_predictor.predict_video(path)
    assert answer["kind"] == "video" and answer["label"] in ("a", "b", "c")
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert answer["uncertain"] == (answer["top_probability"] < 0.5) and answer["threshold"] == 0.5
    timeline = answer["timeline"]
    assert len(timeline) == 4 and timeline[-1]["t_end"] == pytest.approx(4.0)
    assert [s["face"] for s in timeline] == [True, True, True, False]
    assert timeline[-1]["probabilities"] is None and timeline[-1]["label"] is None
    for s in timeline[:3]:
        assert sum(s["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # the answer is the mean of the segments with a face
    mean = np.mean([[s["probabilities"][n] for n in "abc"] for s in timeline[:3]], axis=0)
    assert [answer["probabilities"][n] for n in "abc"] == pytest.approx(mean.tolist(), abs=1e-5)
    sampled = {i for s in timeline for i in s["frames"]}
    assert {f["frame"] for f in answer["faces"]} == sampled
    for f in answer["faces"]:
        assert (f["box"] is not None) == (f["frame"] < 60)
    assert answer["model"] == {"tag": "m:1"} and answer["video"]["segments_with_face"] == 3


def test_predict_video_without_face(tmp_path, micro_predictor):
    path = encode_video(tmp_path / "dark.mp4", np.zeros((30, 64, 96, 3), np.uint8), fps=15.0)
    with pytest.raises(ServingError) as err:
        micro_predictor.predict_video(path, name="dark.mp4")
    assert err.value.code == "no_face" and err.value.status == 422 and "dark.mp4" in err.value.message


def test_predict_image_and_thresholds(tmp_path, micro_predictor):
    import cv2

    img = np.full((120, 160, 3), 120, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    answer = micro_predictor.predict_image(tmp_path / "a.png")
    assert answer["head"] == "static" and answer["label"] in "xyz" and not answer["face"]["whole_image"]
    assert answer["face"]["box"] == pytest.approx([48.0, 30.0, 96.0, 78.0], abs=0.2)
    cv2.imwrite(str(tmp_path / "dark.png"), np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ServingError) as err:
        micro_predictor.predict_image(tmp_path / "dark.png")
    assert err.value.code == "no_face"
    with pytest.raises(ServingError) as err:
        micro_predictor.predict_image(write_mp4v(tmp_path / "v.mp4", plain_frames(1.0)))
    assert err.value.code == "not_image" and err.value.status == 415


def test_clip_checks(micro_predictor):
    ok = np.zeros((2, 4, 32, 32, 3), np.uint8)
    probs = micro_predictor.classify_clips(ok)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for bad in (np.zeros((2, 8, 32, 32, 3), np.uint8), np.zeros((4, 32, 32, 3), np.uint8),
                np.zeros((0, 4, 32, 32, 3), np.uint8)):
        with pytest.raises(ValueError, match="clips"):
            micro_predictor.check_clips(bad)
    assert as_pixels(np.array([0.4, 254.6])).tolist() == [0, 255]
    for bad in (np.array([300]), np.array([-1]), np.array(["a"]), np.array([np.nan])):
        with pytest.raises(ValueError):
            as_pixels(bad)


def test_compact_clips_round_trip():
    clips = np.random.default_rng(3).integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(decode_compact(json.loads(json.dumps(encode_compact(clips)))), clips)
    assert decode_compact([[1]]) == [[1]]  # the nested-list form passes through
    for bad in ({"shape": [2, 2], "data": "AAA="}, {"shape": [1], "data": "*"}, {"data": "AA=="},
                {"shape": [1], "data": "AA==", "dtype": "float32"}):
        with pytest.raises(ValueError, match="compact clips"):
            decode_compact(bad)


def test_thread_tuner_keeps_the_fastest_mode():
    tuner = ThreadTuner(cores=2, explore_every=4)
    assert tuner.modes(1) == [1, 2] and tuner.modes(8) == [1, 2, -2] and tuner.modes(8, splittable=False) == [1, 2]
    assert ThreadTuner(cores=2, fixed=3).modes(8) == [3]
    tried = []
    for per_clip in (0.1, 0.05, 0.025):  # 1 thread, 2 threads, 2 parts side by side
        tried.append(tuner.choose("video", 8))
        tuner.record("video", 8, tried[-1], 8 * per_clip)
    assert tried == [1, 2, -2]  # every mode is measured first
    picks = [tuner.choose("video", 8) for _ in range(8)]
    assert picks.count(-2) == 6 and picks.count(2) == 2  # the fastest, re-checking the runner-up every 4th
    assert tuner.choose("video", 1) == 1  # another batch size is measured on its own
    assert ThreadTuner.bucket(1) == 1 and ThreadTuner.bucket(12) == 8 and ThreadTuner.bucket(500) == 32


def test_answers_do_not_depend_on_the_batch():
    """With trained (non-zero) MoAE experts, capacity drops would make a clip's answer depend on the other
    clips of its batch; at full capacity batched, split and single answers are the same."""
    import dataclasses

    import torch

    from s4d.config import tiny_profile
    from s4d.models.classifier import S4DClassifier

    cfg = dataclasses.replace(tiny_profile(), img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2)
    cfg.moae = dataclasses.replace(cfg.moae, layers=2, experts=4, top_k=2, bottleneck=16, capacity_factor=0.5)
    torch.manual_seed(0)
    model = S4DClassifier(cfg, 3, 3)
    with torch.no_grad():
        for layer in model.moae_layers():
            layer.experts.fc2.weight.normal_(0, 0.5)  # as if trained: the adapters change the features
    predictor = Predictor(model, {"dynamic": list("abc"), "static": list("xyz")}, ServingSettings(),
                          detector=StubDetector())
    assert model.moae_layers()[0].capacity_factor == 2.0  # experts / top_k: room for every token
    clips = np.random.default_rng(0).integers(0, 256, (6, 4, 32, 32, 3), dtype=np.uint8)
    together = predictor.classify_clips(clips)
    alone = np.concatenate([predictor.classify_clips(clips[i:i + 1]) for i in range(len(clips))])
    assert np.allclose(together, alone, atol=1e-5)
    predictor.threads.choose = lambda kind, n, splittable=True: -2 if n >= 2 else 1  # force the split mode
    assert np.allclose(predictor.classify_clips(clips), alone, atol=1e-5)


# --------------------------------------------------------------------------------------- model store
def test_save_to_store_contract(tmp_path):
    import yaml

    ckpt = make_checkpoint(tmp_path / "model.pt", img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2)
    home = tmp_path / "bentoml"
    tag = store_model(ckpt, home, "s4d-dfer", {"metrics": {"test": {"uar": 0.42}}, "data_version": "d1",
                                              "params": {"finetune": {"epochs": 3}}})
    name, version = tag.split(":")
    folder = home / "models" / name / version
    assert (folder / "model.pt").read_bytes() == ckpt.read_bytes()
    info = yaml.safe_load((folder / "model.yaml").read_text())
    meta = info["metadata"]
    assert meta["labels"] == {"dynamic": LABELS, "static": LABELS}
    assert meta["metrics"]["test"] == {"uar": 0.42} and meta["metrics"]["val"]["dynamic"]["uar"] == 0.5
    assert meta["params"]["finetune"] == {"epochs": 3} and meta["params"]["data"]["frame_stride"] == 2
    assert meta["data_version"] == "d1" and meta["model_config"]["img_size"] == 32
    assert info["labels"]["data_version"] == "d1" and info["labels"]["stage"] == "candidate"
    # something that is not a fine-tuned classifier never reaches the store
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="not a readable torch checkpoint"):
        store_model(tmp_path / "junk.pt", home)


def test_model_tag_choice(tmp_path, monkeypatch):
    from s4d.registry import model_tag

    monkeypatch.delenv("S4D_MODEL_TAG", raising=False)
    assert model_tag() == "s4d-champion:latest"
    bento_yaml = tmp_path / "bento.yaml"
    bento_yaml.write_text("models:\n- tag: s4d-dfer:aaa\n- tag: s4d-champion:bbb\n")
    assert model_tag(bento_yaml) == "s4d-champion:bbb"  # inside a bento: the version it was built with
    assert model_tag(tmp_path / "missing.yaml") == "s4d-champion:latest"
    monkeypatch.setenv("S4D_MODEL_TAG", "s4d-dfer:ccc")
    assert model_tag(bento_yaml) == "s4d-dfer:ccc"


# -------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving")
    ckpt = make_checkpoint(folder / "model.pt")  # the tiny profile: what the benchmark target is set for
    home = folder / "bentoml"
    tag = store_model(ckpt, home, "s4d-champion", {"metrics": {"test": {"uar": 0.4, "war": 0.45}},
                                                    "data_version": "test-data"})
    return {"home": home, "tag": tag, "folder": folder}


@pytest.fixture(scope="module")
def server(store):
    settings = {"S4D_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB), "S4D_MAX_SECONDS": str(MAX_SECONDS)}
    service = ServiceProcess("serving.service:S4DService", store["home"], store["folder"] / "serve.log", env=settings)
    with service:
        yield service
    log = service.log_tail(2_000_000)
    assert not re.search(r"status=5\d\d", log), "the server answered 5xx:\n" + log[-4000:]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic uploads, made once."""
    d = tmp_path_factory.mktemp("uploads")
    faces = encode_video(d / "faces.mp4", synthetic_face_frames(2.0, fps=25.0, size=256), fps=25.0)
    full = encode_video(d / "full.mp4", plain_frames(4.0, fps=25.0), fps=25.0, faststart=True).read_bytes()
    tail = write_mp4v(d / "tail.mp4", plain_frames(3.0)).read_bytes()
    return {
        "faces.mp4": faces,
        "noise.mp4": _write(d / "noise.mp4", np.random.default_rng(0).bytes(100_000)),
        "notes.mp4": _write(d / "notes.mp4", b"just some text, not a video\n" * 100),
        "empty.mp4": _write(d / "empty.mp4", b""),
        "half.mp4": _write(d / "half.mp4", full[: len(full) // 2]),
        "cut.mp4": _write(d / "cut.mp4", tail[: len(tail) // 10]),
        "huge.mp4": _write(d / "huge.mp4", np.random.default_rng(1).bytes((UPLOAD_LIMIT_MB + 1) * 2**20)),
        "long.mp4": write_mp4v(d / "long.mp4", plain_frames(MAX_SECONDS + 3, fps=5.0), fps=5.0),
        "odd.avi": unsupported_codec_avi(d / "odd.avi"),
        "faceless.mp4": write_mp4v(d / "faceless.mp4", plain_frames(2.0)),
        "still.png": _png(d / "still.png"),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png(path: Path) -> Path:
    import cv2

    cv2.imwrite(str(path), synthetic_face_image(size=200)[:, :, ::-1])
    return path


def post_file(url: str, field: str, path: Path, timeout: float = 60) -> requests.Response:
    with open(path, "rb") as f:
        return requests.post(url, files={field: (path.name, f, "application/octet-stream")}, timeout=timeout)


def test_health_readiness_and_metadata(server, store):
    assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/livez", timeout=5).status_code == 200
    health = requests.get(f"{server.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["ready"] and health["model"] == store["tag"]
    # S4D_BF16=auto: what this machine's cached precision probe says (bf16 on CPUs with fast bf16 units)
    from s4d.precision import use_bf16
    assert health["device"] == "cpu" and health["dtype"] == ("bfloat16" if use_bf16("auto", "cpu") else "float32")
    meta = requests.get(f"{server.url}/model", timeout=5).json()
    assert meta == requests.post(f"{server.url}/metadata", json={}, timeout=5).json()
    assert meta["tag"] == store["tag"] and meta["version"] == store["tag"].split(":")[1]
    assert meta["labels"] == {"dynamic": LABELS, "static": LABELS}
    assert meta["metrics"]["test"] == {"uar": 0.4, "war": 0.45} and meta["data_version"] == "test-data"
    assert meta["params"]["data"]["frame_stride"] == 2
    assert meta["input"]["num_frames"] == 8 and meta["input"]["img_size"] == 64
    assert meta["settings"]["S4D_MAX_UPLOAD_MB"] == UPLOAD_LIMIT_MB


def check_video_answer(answer: dict, tag: str) -> None:
    assert answer["kind"] == "video" and answer["label"] in LABELS and answer["labels"] == LABELS
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert answer["uncertain"] == (answer["top_probability"] < answer["threshold"])
    assert answer["model"]["tag"] == tag and answer["model"]["version"] == tag.split(":")[1]
    assert answer["timeline"] and all({"t_start", "t_end", "probabilities"} <= set(s) for s in answer["timeline"])
    boxes = [f["box"] for f in answer["faces"] if f["box"] is not None]
    assert boxes and all(x2 > x1 and y2 > y1 for x1, y1, x2, y2 in boxes)


def test_synthetic_face_video(server, store, files):
    r = post_file(f"{server.url}/predict_video", "video", files["faces.mp4"])
    assert r.status_code == 200, r.text
    check_video_answer(r.json(), store["tag"])


def test_image_upload(server, files):
    r = post_file(f"{server.url}/predict_image", "image", files["still.png"])
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["head"] == "static" and answer["label"] in LABELS
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


@real_media
def test_real_single_face_video(server, store):
    r = post_file(f"{server.url}/predict_video", "video", MEDIA / "single_face.mp4")
    assert r.status_code == 200, r.text
    answer = r.json()
    check_video_answer(answer, store["tag"])
    assert all(s["face"] for s in answer["timeline"])  # one face throughout
    assert sum(f["box"] is not None for f in answer["faces"]) >= 0.9 * len(answer["faces"])
    assert answer["video"]["width"] == 640 and answer["video"]["duration"] == pytest.approx(2.4, abs=0.05)


@real_media
def test_real_no_face_video(server):
    r = post_file(f"{server.url}/predict_video", "video", MEDIA / "no_face.mp4")
    assert r.status_code == 422 and r.json()["code"] == "no_face", r.text
    assert "no face" in r.json()["error"]


@real_media
def test_real_face_then_no_face(server):
    r = post_file(f"{server.url}/predict_video", "video", MEDIA / "face_noface.mov")  # HEVC, 960x540
    assert r.status_code == 200, r.text
    faces = [s["face"] for s in r.json()["timeline"]]
    assert faces[0] and not faces[-1]  # the face leaves: the timeline says so


@real_media
@pytest.mark.parametrize("suffix, codec", [("webm", "libvpx"), ("mkv", "libx264"), ("avi", "mpeg4"),
                                           ("mov", "libx264")])
def test_real_video_containers(server, store, tmp_path, suffix, codec):
    import cv2

    from s4d.data.media import read_video

    frames = read_video(MEDIA / "single_face.mp4").frames[:40]
    small = np.stack([cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA) for f in frames])
    path = encode_video(tmp_path / f"single_face.{suffix}", small, fps=30.0, codec=codec)
    r = post_file(f"{server.url}/predict_video", "video", path)
    assert r.status_code == 200, r.text
    check_video_answer(r.json(), store["tag"])


@real_media
def test_real_images(server):
    r = post_file(f"{server.url}/predict_image", "image", MEDIA / "multi_face.jpg")
    assert r.status_code == 200, r.text
    face = r.json()["face"]
    assert face["faces_found"] >= 4 and not face["whole_image"]
    x1, y1, x2, y2 = face["box"]
    r = post_file(f"{server.url}/predict_image", "image", MEDIA / "0-f15-hao-ph.jpg")
    assert r.status_code == 200 and r.json()["label"] in LABELS


@real_media
def test_real_face_crop_is_used_whole(server, tmp_path):
    import cv2

    image = cv2.imread(str(MEDIA / "0-f15-hao-ph.jpg"))
    h, w = image.shape[:2]
    cv2.imwrite(str(tmp_path / "crop.jpg"), image[int(0.3 * h):int(0.75 * h), int(0.3 * w):int(0.7 * w)])
    r = post_file(f"{server.url}/predict_image", "image", tmp_path / "crop.jpg")
    assert r.status_code == 200, r.text
    assert r.json()["face"]["whole_image"] is True


BAD_INPUTS = [  # (route, field, file, status, code, words the message must contain)
    ("predict_video", "video", "noise.mp4", 415, "not_media", "not a recognised"),
    ("predict_video", "video", "notes.mp4", 415, "not_media", "not a recognised"),
    ("predict_video", "video", "empty.mp4", 400, "empty", "empty"),
    ("predict_video", "video", "half.mp4", 422, "unreadable", "truncated"),
    ("predict_video", "video", "cut.mp4", 422, "unreadable", "truncated"),
    ("predict_video", "video", "huge.mp4", 413, "too_large", "upload limit"),
    ("predict_video", "video", "long.mp4", 422, "too_long", "longer than the limit"),
    ("predict_video", "video", "odd.avi", 415, "unsupported_codec", "codec"),
    ("predict_video", "video", "faceless.mp4", 422, "no_face", "no face"),
    ("predict_video", "video", "still.png", 415, "not_video", "image"),
    ("predict_image", "image", "faceless.mp4", 415, "not_image", "image"),
    ("predict_image", "image", "empty.mp4", 400, "empty", "empty"),
    ("predict_image", "image", "huge.mp4", 413, "too_large", "upload limit"),
    ("predict_image", "image", "notes.mp4", 415, "not_image", "image"),
]


@pytest.mark.parametrize("route, field, name, status, code, words", BAD_INPUTS,
                         ids=[f"{r[0]}-{r[2]}" for r in BAD_INPUTS])
def test_bad_input_is_a_named_4xx(server, files, route, field, name, status, code, words):
    r = post_file(f"{server.url}/{route}", field, files[name])
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and words in body["error"] and body["status"] == status


def test_oversized_chunked_upload_is_refused(server, files):
    """Without a Content-Length the size limit still holds (the body is counted as it arrives)."""
    boundary = "s4dboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"huge.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    data = files["huge.mp4"].read_bytes()

    def body():
        yield head
        for i in range(0, len(data), 256 * 1024):
            yield data[i:i + 256 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.post(f"{server.url}/predict_video", data=body(), timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_malformed_requests(server, files):
    r = requests.post(f"{server.url}/predict_video", files={"wrong_field": ("a.mp4", b"123")}, timeout=30)
    assert r.status_code == 400 and "video" in r.text and r.json()["code"] == "bad_request"
    data = files["faces.mp4"].read_bytes()
    malformed = [  # (kwargs, status, code, what the message must say): all named, none a 5xx
        ({"data": b"x", "headers": {"Content-Type": "multipart/form-data"}}, 400, "bad_request", "without a boundary"),
        ({"files": {"video": ("a.mp4", data), "extra": ("b.mp4", data)}}, 400, "bad_request", "could not be read"),
        ({"data": {"video": "http://10.255.255.1/x.mp4"}}, 415, "bad_content_type", "multipart/form-data"),
        ({"data": data, "headers": {"Content-Type": "video/mp4"}}, 415, "bad_content_type", "multipart/form-data"),
    ]
    for kwargs, status, code, words in malformed:
        r = requests.post(f"{server.url}/predict_video", timeout=60, **kwargs)
        assert r.status_code == status and r.json()["code"] == code and words in r.json()["error"], r.text
        assert "-F video=@FILE" in r.json()["error"]
    r = requests.post(f"{server.url}/predict_video", files={"video": ("x" * 4000 + ".mp4", data)}, timeout=60)
    assert r.status_code == 200, r.text  # the client's name is never used (the server names the upload)
    r = requests.post(f"{server.url}/predict_video", files={"video": ("x" * 5000 + ".mp4", data)}, timeout=60)
    assert r.status_code == 400 and "file name" in r.json()["error"], r.text  # beyond the parser's header line
    r = requests.post(f"{server.url}/classify_clips", json={"clips": np.zeros((1, 4, 64, 64, 3), int).tolist()},
                      timeout=30)
    assert r.status_code == 400 and "clips must have shape (B, 8, 64, 64, 3)" in r.text
    assert r.json()["code"] == "bad_clips"
    r = requests.post(f"{server.url}/classify_clips", json={"clips": [[300]]}, timeout=30)
    assert r.status_code == 400 and "0..255" in r.text


def test_clip_forms_agree(server):
    """Nested lists, the compact form and one request per clip give the same probabilities."""
    clips = np.random.default_rng(0).integers(0, 256, (3, 8, 64, 64, 3), dtype=np.uint8)
    batched = requests.post(f"{server.url}/classify_clips", json={"clips": clips.tolist()}, timeout=60)
    assert batched.status_code == 200, batched.text
    single = [requests.post(f"{server.url}/classify_clips", json={"clips": encode_compact(clips[i:i + 1])},
                            timeout=60) for i in range(3)]
    assert all(r.status_code == 200 for r in single), [r.text for r in single]
    compact = requests.post(f"{server.url}/classify_clips", json={"clips": encode_compact(clips)}, timeout=60)
    assert compact.status_code == 200, compact.text
    a, c = np.array(batched.json()), np.array(compact.json())
    b = np.concatenate([np.array(r.json()) for r in single])
    assert a.shape == (3, len(LABELS)) and np.allclose(a.sum(1), 1, atol=1e-4)
    assert np.allclose(a, b, atol=1e-4) and np.allclose(a, c, atol=1e-4)
    bad = requests.post(f"{server.url}/classify_clips", json={"clips": {"shape": [1, 8, 64, 64, 3], "data": "AAAA"}},
                        timeout=30)
    assert bad.status_code == 400 and "do not fill shape" in bad.text


def test_concurrent_burst(server, files):
    """8 clients for 10 s, mixing good and bad requests of every endpoint: every answer is the expected
    one (no 5xx, no dropped connection), and the same worker is alive and healthy afterwards."""
    pid = requests.get(f"{server.url}/health", timeout=5).json()["pid"]
    clip = np.random.default_rng(1).integers(0, 256, (1, 8, 64, 64, 3), dtype=np.uint8)
    clip_body = json.dumps({"clips": clip.tolist()}).encode()
    jobs = [("classify_clips", None, None, 200), ("predict_video", "video", "faces.mp4", 200),
            ("classify_clips", None, None, 200), ("predict_video", "video", "noise.mp4", 415),
            ("predict_image", "image", "still.png", 200), ("predict_video", "video", "faceless.mp4", 422),
            ("classify_clips", None, None, 200), ("predict_video", "video", "half.mp4", 422)]
    results, problems = [], []
    stop = time.time() + 10

    def client(k: int) -> None:
        session = requests.Session()
        n = k
        while time.time() < stop:
            route, field, name, expected = jobs[n % len(jobs)]
            n += 1
            try:
                if field is None:
                    r = session.post(f"{server.url}/{route}", data=clip_body, timeout=120,
                                     headers={"Content-Type": "application/json"})
                else:
                    with open(files[name], "rb") as f:
                        r = session.post(f"{server.url}/{route}", files={field: (name, f)}, timeout=120)
                results.append(r.status_code)
                if r.status_code != expected:
                    problems.append(f"{route} {name}: {r.status_code} {r.text[:200]}")
            except requests.RequestException as e:
                problems.append(f"{route} {name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert len(results) >= 16 and not any(s >= 500 for s in results)
    health = requests.get(f"{server.url}/health", timeout=5).json()
    assert health["pid"] == pid and health["served"]["server_error"] == 0 and server.alive()


# ---------------------------------------------------------------------------------------------- bento
@pytest.mark.slow
def test_bento_carries_the_model_and_serves(store, tmp_path):
    """`bentoml build` -> export -> import into an empty BentoML home -> `bentoml serve` the bento: the
    model travels inside the bento and the packaged code answers (no docker involved)."""
    import subprocess

    from s4d.bento import build_bento

    env = env_for(store["home"])
    env.pop("S4D_MODEL_TAG", None)
    bento = build_bento(env={k: env[k] for k in ("BENTOML_HOME", "PYTHONPATH")})["bento_tag"]
    assert bento.startswith("s4d_dfer:")
    archive = tmp_path / "s4d.bento"
    run = lambda *args, home: subprocess.run([*bentoml_cli(), *args], env=env_for(home), capture_output=True,
                                             text=True, timeout=300, cwd=tmp_path)
    out = run("export", bento, str(archive), home=store["home"])
    assert out.returncode == 0, out.stderr
    fresh = tmp_path / "fresh_home"
    out = run("import", str(archive), home=fresh)
    assert out.returncode == 0, out.stderr
    assert (fresh / "models" / "s4d-champion" / store["tag"].split(":")[1] / "model.pt").is_file()
    bento_src = fresh / "bentos" / "s4d_dfer" / bento.split(":")[1] / "src"
    assert (bento_src / "serving" / "service.py").is_file() and (bento_src / "s4d" / "models" / "vit.py").is_file()
    # The whole package travels: an exclude pattern once matched s4d/data/ too, and the bento only served where
    # the project's editable install supplied the missing modules.
    root = Path(__file__).resolve().parents[1]
    code = {str(p.relative_to(root)) for d in ("s4d", "serving") for p in (root / d).rglob("*.py")
            if "__pycache__" not in p.parts}
    packed = {str(p.relative_to(bento_src)) for p in bento_src.rglob("*.py")}
    assert code - packed == set()
    env_clean = {"PYTHONPATH": ""}  # only the bento's own code
    with ServiceProcess(bento, fresh, tmp_path / "bento.log", env=env_clean, cwd=tmp_path) as service:
        health = requests.get(f"{service.url}/health", timeout=5).json()
        assert health["model"] == store["tag"]
        clips = np.zeros((1, 8, 64, 64, 3), np.uint8).tolist()
        r = requests.post(f"{service.url}/classify_clips", json={"clips": clips}, timeout=60)
        assert r.status_code == 200 and len(r.json()[0]) == len(LABELS)
        assert requests.get(f"{service.url}/demo", timeout=5).status_code == 200


# ------------------------------------------------------------------- limits, timing, boxes (no server)
def test_timing_comes_from_timestamps_when_the_rate_is_high(tmp_path):
    """1.5 s filmed at 1000 fps: 1.5 s and 2 segments (a header rate above the old 1000 fps cut-off used
    to be replaced by 25 fps: 60 s and 30 segments)."""
    path = encode_video(tmp_path / "fast.mp4", plain_frames(1.5, fps=1000.0, size=(64, 48)), fps=1000.0)
    video = decode_for_timeline(path, 8, 2, ServingSettings())
    assert video.total_frames == 1500 and video.fps == pytest.approx(1000.0, rel=0.01)
    assert video.duration == pytest.approx(1.5, abs=0.01) and len(video.segments) == 2
    assert video.segments[-1].t_end == pytest.approx(1.5, abs=0.01)
    assert len(video.frames) == 16  # only the clips' frames were converted


def test_frame_size_is_refused_from_the_header(tmp_path):
    big = encode_video(tmp_path / "big.mkv", np.full((2, 1200, 1800, 3), 90, np.uint8), fps=10.0)
    with pytest.raises(ServingError) as err:
        decode_for_timeline(big, 8, 2, ServingSettings(max_pixels=2_000_000))
    assert err.value.code == "too_large" and err.value.status == 413 and "1800x1200" in err.value.message


def test_playlist_never_opens_the_file_it_lists(tmp_path):
    """An HLS playlist naming a real face video on this disk is refused as not_media; so is a concat list.
    The target itself decodes (it would have been analysed if FFmpeg had been given the playlist)."""
    from s4d.data.media import read_video

    target = encode_video(tmp_path / "target.mp4", plain_frames(2.0, fps=10.0), fps=10.0)
    assert decode_for_timeline(target, 8, 2, ServingSettings()).total_frames == 20
    lists = {"x.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:16\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n",
             "x.ffconcat": f"ffconcat version 1.0\nfile '{target}'\n"}
    for name, text in lists.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ServingError) as err:
            decode_for_timeline(tmp_path / name, 8, 2, ServingSettings())
        assert err.value.code == "not_media" and err.value.status == 415
        with pytest.raises(Exception) as err:  # the offline reader refuses it the same way
            read_video(tmp_path / name)
        assert getattr(err.value, "code", None) == "not_media"


def test_image_bombs_are_refused_before_decoding(tmp_path):
    """A 20000x20000 PNG of 1.2 MB and a JPEG header claiming 16000x16000 are refused from the header:
    well under a second and without allocating the picture (the test process would need 1.2 GB)."""
    import resource

    import cv2

    from hostile_cases import jpeg_claiming, png_bomb
    from serving.inputs import read_upload_image

    still = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))[1].tobytes()
    (tmp_path / "bomb.png").write_bytes(png_bomb(20000, 20000))
    (tmp_path / "lie.jpg").write_bytes(jpeg_claiming(still, 16000, 16000))
    assert (tmp_path / "bomb.png").stat().st_size < 1_500_000  # 1.2 GB of pixels in 1.2 MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("bomb.png", "lie.jpg"):
        start = time.perf_counter()
        with pytest.raises(ServingError) as err:
            read_upload_image(tmp_path / name, ServingSettings())
        assert time.perf_counter() - start < 1.0
        assert err.value.code == "too_large" and err.value.status == 413 and "pixels" in err.value.message
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KB: no picture allocated


def test_boxes_are_clipped_to_the_picture():
    from serving.inference import _box

    assert _box(np.array([-10.0, 5.0, 330.0, 400.0]), 0.5, 640, 360) == [0.0, 10.0, 640.0, 360.0]
    assert _box(np.array([10.0, 20.0, 30.0, 40.0]), 1.0, 640, 360) == [10.0, 20.0, 30.0, 40.0]


def test_overload_is_a_503_with_retry_after():
    """The RequestGuard in front of a slow app: with S4D_MAX_PENDING=2, a third concurrent POST gets
    503 `overloaded` with Retry-After at once; GET requests are never queued."""
    import asyncio

    from serving.http import Counters, RequestGuard

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"[]"})

    counters = Counters()
    guard = RequestGuard(slow_app, ServingSettings(max_pending=2), counters)

    async def call(method="POST", path="/classify_clips"):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path,
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]}
        await guard(scope, receive, send)
        return sent

    async def scenario():
        first = [asyncio.create_task(call()) for _ in range(2)]
        await asyncio.sleep(0.05)
        third = await asyncio.wait_for(call(), timeout=2)
        health = asyncio.create_task(call("GET", "/health"))
        release.set()
        return [await t for t in first], third, await health

    first, third, health = asyncio.run(scenario())
    assert third[0]["status"] == 503 and dict(third[0]["headers"])[b"retry-after"] == b"2"
    body = json.loads(third[1]["body"])
    assert body["code"] == "overloaded" and "S4D_MAX_PENDING" in body["error"]
    assert [m[0]["status"] for m in first] == [200, 200] and health[0]["status"] == 200
    assert counters.snapshot() == {"ok": 3, "client_error": 0, "server_error": 0, "overloaded": 1, "pending": 0}


@real_media
@pytest.mark.parametrize("name", ["single_face.mp4", "face_noface.mov"])
def test_video_tracking_matches_dense_detection(name):
    """The video path's sparse detection (every S4D_DETECT_EVERY-th timeline frame, 320 px, coarse
    pyramid, interpolated in time) against an independent reference: MTCNN with its own settings on
    every timeline frame at full resolution. Same frames with a face; boxes close to the reference's."""
    from s4d.data.faces import FaceDetector, box_iou, track_faces

    settings = ServingSettings()
    video = decode_for_timeline(MEDIA / name, 8, 2, settings, name)
    rows = sorted(video.frames)
    frames = [video.frames[i] for i in rows]
    reference = FaceDetector("mtcnn", max_side=960, min_face_size=40).detect(frames)
    track = track_faces(frames, video_detector(settings), settings.detect_every, positions=rows)
    assert track.detector_frames < len(frames)  # sparse: the reference saw every frame
    assert track.present.tolist() == [len(r) > 0 for r in reference]
    ious = [max(box_iou(track.boxes[k], b) for b in r.boxes) for k, r in enumerate(reference) if len(r)]
    assert np.median(ious) >= 0.85 and min(ious) >= 0.7, (np.median(ious), min(ious))


@real_media
def test_real_boxes_stay_inside_the_frame(server, tmp_path):
    """WolfgangLanger_Pexels.mp4 (640x360), its first 11 s (the server's limit is 12 s): the face nears the
    bottom edge; every box is clipped to the frame, the timing is right and every segment has the face."""
    from s4d.data.media import read_video

    video = read_video(MEDIA / "WolfgangLanger_Pexels.mp4", max_frames=264)  # 23.976 fps: 11.01 s
    path = encode_video(tmp_path / "wolfgang11.mp4", video.frames, fps=video.fps)
    r = post_file(f"{server.url}/predict_video", "video", path, timeout=300)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["video"]["duration"] == pytest.approx(11.01, abs=0.05) and answer["video"]["segments"] == 11
    assert answer["video"]["segments_with_face"] == 11
    boxes = [f["box"] for f in answer["faces"] if f["box"] is not None]
    assert len(boxes) >= 0.9 * len(answer["faces"])
    assert all(0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360 for x1, y1, x2, y2 in boxes)
