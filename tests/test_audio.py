import json
import math

import numpy as np
import pytest
import torch

from coursekit import audio, data, metrics, models, music
from tests.helpers import save_pipeline_layout, tiny_scheduler, tiny_unet

P = audio.PRESETS["small"]


def tone(freq, seconds=None, rate=P.sample_rate, amp=0.5):
    n = int((seconds or P.slice_seconds) * rate)
    return amp * torch.sin(2 * math.pi * freq * torch.arange(n) / rate)


def test_image_is_8_bit_grey_levels_in_range_with_low_frequencies_in_row_0():
    """audio-diffusion's convention (tests/test_audio_conformance.py checks it against the reference):
    row 0 is the lowest mel band, 256 grey levels g read as g / 255 * 2 - 1."""
    low, high = audio.to_image(tone(150), P), audio.to_image(tone(3000), P)
    assert low.shape == (1, P.n_mels, P.frames)
    assert low.min() >= -1 and low.max() == pytest.approx(1.0)
    for image in (low, high):
        grey = (image + 1) / 2 * 255
        torch.testing.assert_close(grey, grey.round(), atol=1e-4, rtol=0)
    rows = lambda im: im[0].mean(1)
    assert rows(low).argmax() < P.n_mels // 4 and rows(high).argmax() > P.n_mels * 3 // 4


def test_a_slice_is_frames_hops_less_one_sample_and_short_audio_is_padded():
    assert P.slice_samples == P.frames * P.hop_length - 1
    short = tone(440, 0.3)
    torch.testing.assert_close(audio.to_image(short, P),
                               audio.to_image(torch.nn.functional.pad(short, (0, P.slice_samples - len(short))), P))
    assert len(audio.from_image(audio.to_image(short, P), P)) == (P.frames - 1) * P.hop_length


def test_roundtrip_quality_on_synthetic_signals():
    """Spectral SNR of audio -> image -> Griffin-Lim audio: well above a wrong reconstruction."""
    chord = tone(220) + tone(277) + tone(330)
    good = audio.roundtrip_db(chord / 2, P)
    assert good > 3.0
    window = torch.hann_window(P.n_fft)
    mag = lambda w: torch.stft(w, P.n_fft, P.hop_length, window=window, return_complex=True).abs()
    wrong = audio.from_image(audio.to_image(tone(1500), P), P)[: len(chord)]
    wrong = torch.nn.functional.pad(wrong, (0, len(chord) - len(wrong)))
    a, b = mag(chord / 2), mag(wrong)
    wrong_db = float(20 * torch.log10(a.norm() / (a - b * a.norm() / b.norm()).norm()))
    assert good > wrong_db + 3


@pytest.mark.parametrize("quiet", [torch.zeros(P.slice_samples), 1e-6 * torch.randn(P.slice_samples),
                                   torch.zeros(100)])
def test_silence_is_a_silent_image_and_back_to_silence(quiet):
    """The image is relative to the slice's loudest bin, so silence (and noise far under 16-bit
    audio's floor) would otherwise become a full-loudness image and loud noise."""
    image = audio.to_image(quiet, P)
    torch.testing.assert_close(image, -torch.ones(1, P.n_mels, P.frames))
    back = audio.from_image(image, P)
    assert back.shape == ((P.frames - 1) * P.hop_length,) and not back.any()


def test_quiet_sound_is_not_silence():
    """A tone at -83 dBFS (RMS 7e-5) is still a tone: its loudest bin is at 1, in the row of a
    loud 440 Hz tone's, and it comes back at peak 0.9."""
    quiet = tone(440, amp=1e-4)
    image = audio.to_image(quiet, P)
    assert image.max() == pytest.approx(1.0) and (image > -1).float().mean() > 0.1
    assert image[0].mean(1).argmax() == audio.to_image(tone(440), P)[0].mean(1).argmax()
    assert audio.from_image(image, P).abs().max() == pytest.approx(0.9)


def test_a_samplers_overshoot_is_clipped_as_the_pipeline_clips_it():
    image = audio.to_image(tone(330), P)
    over = image * 1.05
    assert over.max() > 1 and over.min() < -1
    torch.testing.assert_close(audio.magnitude_from_image(over, P), audio.magnitude_from_image(over.clamp(-1, 1), P))


def test_from_image_refuses_the_wrong_shape():
    with pytest.raises(audio.AudioError, match=r"\(64, 32\)"):
        audio.from_image(torch.zeros(1, 32, 32), P)


@pytest.mark.parametrize("bad, rate, match", [
    (torch.zeros(0), P.sample_rate, "empty"),
    (tone(440), 22050, "8000 Hz.*resample"),
    (torch.stack([tone(440), tone(220)]), P.sample_rate, "mono.*mean"),
    ((tone(440) * 32767).to(torch.int16), P.sample_rate, "float.*32768"),
    ("not audio", P.sample_rate, "1-D array"),
])
def test_bad_audio_is_refused_with_the_fix(bad, rate, match):
    with pytest.raises(audio.AudioError, match=match):
        audio.to_image(bad, P, sample_rate=rate)


def test_wav_files_round_trip_and_bad_files_are_refused(tmp_path):
    import soundfile as sf

    path = audio.write_wav(tmp_path / "a.wav", tone(440, 0.5), P.sample_rate)
    wave, rate = audio.read_wav(path)
    assert rate == P.sample_rate and len(wave) == 4000
    assert torch.allclose(wave, tone(440, 0.5), atol=1e-4)
    up, rate = audio.read_wav(path, sample_rate=16000)
    assert rate == 16000 and abs(len(up) - 8000) <= 1
    (tmp_path / "notes.wav").write_text("these are not samples")
    with pytest.raises(audio.AudioError, match="not a readable sound file"):
        audio.read_wav(tmp_path / "notes.wav")
    sf.write(tmp_path / "stereo.wav", np.zeros((800, 2), dtype=np.float32), 8000)
    with pytest.raises(audio.AudioError, match="2 channels.*mono"):
        audio.read_wav(tmp_path / "stereo.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), 8000)
    with pytest.raises(audio.AudioError, match="no audio"):
        audio.read_wav(tmp_path / "empty.wav")


def test_slices_and_join():
    wave = tone(440, 3.5)
    pieces = audio.slices(wave, P)
    assert len(pieces) == int(len(wave) // P.slice_samples) and all(len(p) == P.slice_samples for p in pieces)
    joined = audio.join(pieces, P, fade=0)
    torch.testing.assert_close(joined, wave[: len(joined)])
    assert len(audio.join(pieces, P)) == len(pieces) * P.slice_samples - (len(pieces) - 1) * (P.slice_samples // 16)
    with pytest.raises(audio.AudioError, match="shorter than one slice"):
        audio.slices(tone(440, 0.2), P)


def test_music_corpus_renders_two_genres_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_CACHE", str(tmp_path))
    first = music.music_corpus(per_genre=2)
    assert sorted(first["genre"]) == [0, 0, 1, 1]
    assert all(w.dtype == np.float32 and len(w) > 2 * 8000 and np.abs(w).max() <= 0.91 for w in first["wave"])
    assert list(tmp_path.glob("music-*.npz"))
    again = music.music_corpus(per_genre=2)
    assert all(np.array_equal(a, b) for a, b in zip(first["wave"], again["wave"]))
    images, labels = music.spectrogram_dataset(first, P)
    assert images.shape[1:] == (1, P.n_mels, P.frames) and set(labels.tolist()) == {0, 1}


def test_music_is_a_dataset_with_audio_and_genre(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(music, "music_corpus", lambda: {"wave": [np.zeros(9000, np.float32) + 0.1] * 2,
                                                        "genre": [0, 1], "title": ["a", "b"]})
    data._music.cache_clear()
    try:
        ds = data.load_dataset("music")
        assert ds.column_names == ["audio", "sampling_rate", "label", "title"]
        assert ds.features["label"].names == ["chorale", "fiddle"] and ds[0]["sampling_rate"] == 8000
        assert len(ds[1]["audio"]) == 9000
    finally:
        data._music.cache_clear()


def test_audio_checkpoint_loads_as_unet_scheduler_and_mel_settings(tmp_path):
    """The full track's layout (unet/, scheduler/, mel/mel_config.json), offline, on a tiny model."""
    folder = save_pipeline_layout(tmp_path / "audio-model", tiny_unet(size=8), tiny_scheduler())
    (folder / "mel").mkdir()
    (folder / "mel" / "mel_config.json").write_text(json.dumps(
        {"x_res": 8, "y_res": 8, "sample_rate": 22050, "n_fft": 2048, "hop_length": 512, "top_db": 80, "n_iter": 32}))
    unet, scheduler, preset = models.load_audio_model(str(folder))
    assert preset == audio.MelPreset(22050, 2048, 512, 8, 8, 80.0, 32)
    assert unet.config.sample_size == 8 and type(scheduler).__name__ == "DDPMScheduler"


def test_genre_judge_tells_the_rendered_genres_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSEKIT_CACHE", str(tmp_path))
    images, labels = music.spectrogram_dataset(music.music_corpus(per_genre=4), P)
    judge = metrics.genre_judge(images, labels)
    assert judge.held_out_accuracy > 0.9
    assert judge.share(images[labels == 1], 1) > 0.9 and judge.share(images[labels == 0], 1) < 0.1
    silence_like = -torch.ones(5, 1, P.n_mels, P.frames)
    assert judge.predict(silence_like).shape == (5,)


def _fake_music(monkeypatch, waves, genres):
    corpus = {"wave": waves, "genre": genres, "title": [str(i) for i in range(len(waves))]}
    monkeypatch.setattr(music, "music_corpus", lambda: corpus)
    data._music.cache_clear()


def test_dataset_images_keeps_one_genre_by_name_and_refuses_unknown_ones(monkeypatch):
    low, high, short = tone(200, 2.5).numpy(), tone(1500, 3.5).numpy(), tone(300, 0.3).numpy()
    _fake_music(monkeypatch, [low, high, short, high], [0, 1, 0, 1])
    try:
        ds = data.load_dataset("music")
        images, labels = music.dataset_images(ds, P, "fiddle")
        assert images.shape == (6, 1, P.n_mels, P.frames) and labels.tolist() == [1] * 6
        torch.testing.assert_close(images[0], audio.to_image(torch.from_numpy(high[:P.slice_samples]), P))
        assert len(music.dataset_images(ds, P, "fiddle", pieces=1)[0]) == 3
        assert len(music.dataset_images(ds, P)[0]) == 8  # the too-short piece gives no slice
        with pytest.raises(audio.AudioError, match="unknown genre 'jazz'.*chorale, fiddle"):
            music.dataset_images(ds, P, "jazz")
    finally:
        data._music.cache_clear()


def test_full_track_music_dataset_decodes_to_the_small_sets_columns(tmp_path, monkeypatch):
    """lewtun/music_genres_small's layout (audio, song_id, genre_id, genre) in a local Hub cache,
    loaded through data.load: decoded with soundfile when read, stereo mixed down, genre as a
    class label."""
    import io

    import datasets
    import soundfile as sf
    from huggingface_hub import constants

    from tests.helpers import fake_hub_snapshot

    audio_bytes = []
    for freq, channels in [(220, 1), (880, 2), (330, 1)]:
        w = tone(freq, 2.0, rate=22050).numpy()
        buffer = io.BytesIO()
        sf.write(buffer, np.stack([w] * channels, 1) if channels == 2 else w, 22050, format="WAV")
        audio_bytes.append({"bytes": buffer.getvalue(), "path": f"{freq}.wav"})
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    genres = datasets.Dataset.from_dict(
        {"audio": audio_bytes, "song_id": [1, 2, 3], "genre_id": [13, 4, 13], "genre": ["Jazz", "Hip-Hop", "Jazz"]},
        features=datasets.Features({"audio": struct, "song_id": datasets.Value("int64"),
                                    "genre_id": datasets.Value("int64"), "genre": datasets.Value("string")}),
    ).cast_column("audio", datasets.Audio())
    snapshot = fake_hub_snapshot(tmp_path / "hub", "lewtun/music_genres_small", "c" * 40, kind="dataset")
    (snapshot / "data").mkdir()
    genres.to_parquet(str(snapshot / "data" / "train-00000-of-00001.parquet"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    ds = data.load_dataset("music_genres")
    assert ds.features["label"].names == ["Hip-Hop", "Jazz"] and ds.column_names == ["audio", "label"]
    row = ds[1]
    assert row["sampling_rate"] == 22050 and np.asarray(row["audio"]).ndim == 1 and len(row["audio"]) == 44100
    images, labels = music.dataset_images(ds, P, "Jazz")
    per_clip = len(audio.slices(torch.zeros(int(2.0 * P.sample_rate)), P))
    assert len(images) == 2 * per_clip and set(labels.tolist()) == {1}


def test_full_track_music_dataset_offline_names_the_small_set():
    with pytest.raises(data.DataError, match=r"lewtun/music_genres_small .*data.load_dataset\('music'\)"):
        data.load_dataset("music_genres")


def test_mel_config_round_trips_through_preset_from_config():
    for preset in audio.PRESETS.values():
        assert audio.preset_from_config(audio.mel_config(preset)) == preset
