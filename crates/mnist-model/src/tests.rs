use burn::module::Module;
use burn::tensor::{Tensor, TensorData};

use crate::artifact::Manifest;
use burn_flex::Flex;
use burn_ndarray::NdArray;

use super::*;

fn logits<B: Backend>(model: &Cnn<B>, images: &[u8], device: &B::Device) -> Vec<f32> {
    let images = crate::input::images::<B>(images, device);
    model.forward(images).into_data().to_vec::<f32>().expect("f32 logits")
}

fn real_digits(n: usize) -> Vec<u8> {
    let data = mnist_data::Locator::offline(None)
        .load(mnist_data::DatasetKind::Sample)
        .expect("bundled sample");
    data.test.images()[..n * 784].to_vec()
}

#[test]
fn seed_network_has_the_seed_parameter_count_and_shapes() {
    let config = CnnConfig::new();
    assert_eq!(config.num_params(), 3_274_634);
    let model = config.init::<Flex>(1, &Default::default()).unwrap();
    assert_eq!(model.num_params(), 3_274_634);
    let out = model.forward(Tensor::zeros([3, 1, 28, 28], &Default::default()));
    assert_eq!(out.dims(), [3, 10]);
    assert_eq!(model.hidden(Tensor::zeros([2, 1, 28, 28], &Default::default())).dims(), [2, 1024]);
}

#[test]
fn initialisation_is_truncated_normal_and_constant_bias() {
    let model = CnnConfig::new().init::<Flex>(7, &Default::default()).unwrap();
    let w = model.fc1.weight.val().into_data().to_vec::<f32>().unwrap();
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let std = (w.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(w.iter().all(|x| x.abs() <= 0.2), "values beyond two standard deviations");
    assert!(mean.abs() < 1e-3, "mean {mean}");
    // A normal truncated at 2 sigma has standard deviation 0.8796 sigma.
    assert!((std - 0.08796).abs() < 1e-3, "std {std}");
    let b = model.conv2.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
    assert!(b.iter().all(|&x| x == 0.1));
    // Same seed, same weights; another seed, other weights.
    let again = CnnConfig::new().init::<Flex>(7, &Default::default()).unwrap();
    assert_eq!(again.fc1.weight.val().into_data().to_vec::<f32>().unwrap(), w);
    let other = CnnConfig::new().init::<Flex>(8, &Default::default()).unwrap();
    assert_ne!(other.fc1.weight.val().into_data().to_vec::<f32>().unwrap(), w);
}

#[test]
fn invalid_configs_are_rejected() {
    for (config, needle) in [
        (CnnConfig::new().with_dropout(1.0), "dropout"),
        (CnnConfig::new().with_kernel_size(4), "kernel_size"),
        (CnnConfig::new().with_hidden(0), "hidden"),
        (CnnConfig::new().with_init_std(-1.0), "init_std"),
        // Widths whose network would not fit in memory are refused before any allocation
        // (a hand-edited model.json killed the process allocating 1.25 TB).
        (CnnConfig::new().with_hidden(100_000_000), "the network would have 314,700,052,106 parameters; the most is 268,435,456"),
        (CnnConfig::new().with_hidden(2_000_000), "lower hidden"),
        (CnnConfig::new().with_conv2_channels(usize::MAX), "more than 2^64 parameters"),
        (CnnConfig::new().with_conv1_channels(usize::MAX / 2), "parameters; the most is"),
    ] {
        let err = config.init::<Flex>(0, &Default::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn initialisations_that_would_overflow_are_refused_naming_the_field_and_bound() {
    for (config, needle) in [
        (CnnConfig::new().with_init_std(1e30), "init_std must be more than 0 and at most 10 (the seed's is 0.1), got 1e30"),
        (CnnConfig::new().with_init_std(10.5), "init_std must be more than 0 and at most 10 (the seed's is 0.1), got 10.5"),
        (CnnConfig::new().with_init_std(0.0), "init_std must be more than 0"),
        (CnnConfig::new().with_init_std(f64::INFINITY), "got inf"),
        (CnnConfig::new().with_init_std(f64::NAN), "got NaN"),
        (CnnConfig::new().with_init_bias(-1e12), "init_bias must be from -10 to 10 (the seed's is 0.1), got -1e12"),
        (CnnConfig::new().with_init_bias(f64::NAN), "init_bias must be from -10 to 10"),
    ] {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    // The bound itself, and the most negative bias, are accepted.
    CnnConfig::new().with_init_std(CnnConfig::MAX_INIT).with_init_bias(-CnnConfig::MAX_INIT).validate().unwrap();
}

#[test]
fn saved_and_loaded_weights_give_bit_identical_logits() {
    let device = Default::default();
    let config = CnnConfig::new();
    let model = config.init::<Flex>(3, &device).unwrap();
    let digits = real_digits(8);
    let before = logits(&model, &digits, &device);
    let dir = tempfile::tempdir().unwrap();

    let mpk = dir.path().join("model.mpk");
    weights::save(&model, &mpk).unwrap();
    let loaded = weights::load::<Flex>(&config, &mpk, &device).unwrap();
    assert_eq!(logits(&loaded, &digits, &device), before);

    let st = dir.path().join("model.safetensors");
    weights::export_safetensors(&model, &st).unwrap();
    let imported = weights::import_safetensors::<Flex>(&config, &st, &device).unwrap();
    assert_eq!(logits(&imported, &digits, &device), before);
    // Only the two files: no temporary left behind; readable like any written file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&mpk).unwrap().permissions().mode() & 0o777, 0o644);
    }
}

#[test]
fn safetensors_export_uses_pytorch_names_and_layout() {
    let model = CnnConfig::new().init::<Flex>(3, &Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("model.safetensors");
    weights::export_safetensors(&model, &st).unwrap();
    let bytes = std::fs::read(&st).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["fc1.weight"]["shape"], serde_json::json!([1024, 3136]));
    assert_eq!(header["conv1.weight"]["shape"], serde_json::json!([32, 1, 5, 5]));
    assert_eq!(header["fc2.bias"]["shape"], serde_json::json!([10]));
}

#[test]
fn weights_of_another_shape_are_rejected_naming_the_tensor() {
    let device = Default::default();
    let small = CnnConfig::new().with_hidden(16);
    let model = small.init::<Flex>(3, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mpk = dir.path().join("small.mpk");
    weights::save(&model, &mpk).unwrap();
    let err = weights::load::<Flex>(&CnnConfig::new(), &mpk, &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("fc1.weight") && msg.contains("[3136, 16]") && msg.contains("[3136, 1024]"), "{msg}");

    let st = dir.path().join("small.safetensors");
    weights::export_safetensors(&model, &st).unwrap();
    let err = weights::import_safetensors::<Flex>(&CnnConfig::new(), &st, &device).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("fc1.weight"), "{err}");

    // A config whose network is far larger than the file (within the parameter limit):
    // refused from the file's shapes, before the network is built.
    let wide = CnnConfig::new().with_hidden(80_000);
    let err = weights::load::<Flex>(&wide, &mpk, &device).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }) && err.to_string().contains("[3136, 80000]"), "{err}");
}

#[test]
fn missing_tensors_and_garbage_files_are_rejected() {
    let device = Default::default();
    let config = CnnConfig::new();
    let model = config.init::<Flex>(3, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A safetensors file without fc2.
    let mut store = burn_store::SafetensorsStore::from_bytes(None)
        .with_regex(r"^(conv|fc1)")
        .with_to_adapter(burn_store::BurnToPyTorchAdapter);
    burn_store::ModuleSnapshot::save_into(&model, &mut store).unwrap();
    let partial = dir.path().join("partial.safetensors");
    std::fs::write(&partial, store.get_bytes().unwrap()).unwrap();
    let err = weights::import_safetensors::<Flex>(&config, &partial, &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("fc2."), "{msg}");

    let garbage = dir.path().join("garbage.mpk");
    std::fs::write(&garbage, b"definitely not messagepack weights").unwrap();
    let err = weights::load::<Flex>(&config, &garbage, &device).unwrap_err();
    assert!(matches!(err, Error::Format { .. }) && err.to_string().contains("garbage.mpk"), "{err}");
    let err = weights::import_safetensors::<Flex>(&config, &garbage, &device).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    let err = weights::load::<Flex>(&config, &dir.path().join("absent.mpk"), &device).unwrap_err();
    assert!(matches!(err, Error::Read { .. }) && err.to_string().contains("absent.mpk"), "{err}");
}

#[test]
fn ndarray_and_flex_agree_on_real_digits() {
    let config = CnnConfig::new();
    let flex = config.init::<Flex>(11, &Default::default()).unwrap();
    let nd = config.init::<NdArray>(11, &Default::default()).unwrap();
    let digits = real_digits(16);
    let a = logits(&flex, &digits, &Default::default());
    let b = logits(&nd, &digits, &Default::default());
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max <= 1e-4, "max abs difference {max}");
}

#[test]
fn dropout_mask_keeps_the_expected_fraction() {
    let mask = dropout_mask::<Flex>(50, 1024, 0.5, 5, 0, &Default::default());
    let v = mask.into_data().to_vec::<f32>().unwrap();
    assert!(v.iter().all(|&x| x == 0.0 || x == 2.0));
    let kept = v.iter().filter(|&&x| x == 2.0).count() as f64 / v.len() as f64;
    assert!((kept - 0.5).abs() < 0.02, "{kept}");
}

/// The whole network with the fused burn-flex kernels against Burn's own operations: the
/// same logits, and the same gradient for every parameter, within 1e-4.
#[cfg(feature = "flex")]
#[test]
fn fused_kernels_match_burn_operations_on_the_seed_network() {
    assert_kernels_match_burn(Kernels::Fastest);
}

/// Likewise for the im2col + matmul blocks made of tensor operations.
#[cfg(feature = "flex")]
#[test]
fn im2col_kernels_match_burn_operations_on_the_seed_network() {
    assert_kernels_match_burn(Kernels::Im2col);
}

#[cfg(feature = "flex")]
fn assert_kernels_match_burn(kernels: Kernels) {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn_autodiff::Autodiff;
    type Ad = Autodiff<Flex>;
    let device = Default::default();
    let config = CnnConfig::new();
    let fused: Cnn<Ad> = config.init(5, &device).unwrap();
    assert_eq!(fused.kernels, Kernels::Fastest);
    let fused = fused.with_kernels(kernels);
    let reference = fused.clone().with_kernels(Kernels::Burn);
    let n = 30;
    let images = crate::input::images::<Ad>(&real_digits(n), &device);
    let labels = Tensor::<Ad, 1, burn::tensor::Int>::from_data(
        TensorData::new((0..n as i64).map(|i| i % 10).collect::<Vec<_>>(), [n]),
        &device,
    );
    let loss_fn = CrossEntropyLossConfig::new().init::<Ad>(&device);
    let run = |model: &Cnn<Ad>| {
        let logits = model.forward(images.clone());
        let values = logits.clone().into_data().to_vec::<f32>().unwrap();
        let grads = loss_fn.forward(logits, labels.clone()).backward();
        let mut all = vec![values];
        // Every parameter's gradient: the convolutions' and the fully connected layers'.
        for p in [model.conv1.weight.val(), model.conv2.weight.val()] {
            all.push(p.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap());
        }
        for p in [model.fc1.weight.val(), model.fc2.weight.val()] {
            all.push(p.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap());
        }
        for p in [&model.conv1.bias, &model.conv2.bias, &model.fc1.bias, &model.fc2.bias] {
            all.push(p.as_ref().unwrap().val().grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap());
        }
        all
    };
    for (i, (a, b)) in run(&fused).into_iter().zip(run(&reference)).enumerate() {
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d <= 1e-4, "tensor {i}: max difference {d}");
    }
}

#[test]
fn artifact_directories_record_and_verify_the_weights_checksums() {
    let device = Default::default();
    let config = CnnConfig::new();
    let model = config.init::<Flex>(5, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..10).map(|c| format!("class {c}")).collect();
    artifact::save_dir(&model, &Manifest::new(config.clone(), "sample", names.clone()), dir.path()).unwrap();
    let read = artifact::read_manifest(dir.path()).unwrap();
    assert_eq!((&read.config, read.dataset.as_deref(), read.class_names.as_ref()), (&config, Some("sample"), Some(&names)));
    assert_eq!(read.class_name(3), "class 3");
    // A byte order mark (some Windows editors write one) is no content.
    let manifest_text = std::fs::read_to_string(dir.path().join(artifact::MANIFEST)).unwrap();
    std::fs::write(dir.path().join(artifact::MANIFEST), format!("\u{feff}{manifest_text}")).unwrap();
    assert_eq!(artifact::read_manifest(dir.path()).unwrap(), read);
    std::fs::write(dir.path().join(artifact::MANIFEST), manifest_text).unwrap();
    for file in [artifact::WEIGHTS, artifact::SAFETENSORS] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert_eq!(read.sha256[file], mnist_fs::sha256_hex(&bytes), "{file}");
    }
    artifact::load_dir::<Flex>(dir.path(), &device).unwrap();

    // Flipped bytes and a truncated file: named as damaged, never decoded.
    let mpk = dir.path().join(artifact::WEIGHTS);
    let good = std::fs::read(&mpk).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    for bytes in [flipped, good[..good.len() - 1].to_vec(), Vec::new()] {
        std::fs::write(&mpk, &bytes).unwrap();
        let err = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("model.mpk is damaged or truncated (checksum mismatch") && msg.contains("retrain or restore it"), "{msg}");
    }

    // The safetensors copy too, when imported from the directory: a flipped byte is named
    // (it used to load into wrong weights); the same bytes elsewhere have nothing to be
    // held to.
    let st = dir.path().join(artifact::SAFETENSORS);
    let good_st = std::fs::read(&st).unwrap();
    weights::import_safetensors::<Flex>(&config, &st, &device).unwrap();
    let mut flipped = good_st.clone();
    flipped[good_st.len() - 1000] ^= 4;
    std::fs::write(&st, &flipped).unwrap();
    let err = weights::import_safetensors::<Flex>(&config, &st, &device).unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }) && err.to_string().contains("model.safetensors is damaged"), "{err}");
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join(artifact::SAFETENSORS), &flipped).unwrap();
    weights::import_safetensors::<Flex>(&config, &elsewhere.path().join(artifact::SAFETENSORS), &device).unwrap();
    std::fs::write(&st, &good_st).unwrap();

    // A manifest from before checksums loads (nothing to verify); a malformed one is named.
    std::fs::write(&mpk, &good).unwrap();
    let manifest = dir.path().join(artifact::MANIFEST);
    artifact::json::write(&manifest, &config).unwrap();
    let old = artifact::load_dir::<Flex>(dir.path(), &device).unwrap().0;
    assert_eq!((old.dataset.as_deref(), old.class_names.as_ref(), old.class_name(7)), (None, None, "7".to_string()));
    // Without a checksum, a truncated file is a decoding error without Burn's advice about
    // old record formats, which does not apply.
    std::fs::write(&mpk, &good[..good.len() / 2]).unwrap();
    let msg = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err().to_string();
    assert!(msg.contains("damaged, truncated or not written by mnist-rs") && !msg.contains("backward-compat"), "{msg}");
    std::fs::write(&manifest, r#"{"sha256": {"model.mpk": "1234"}}"#).unwrap();
    let msg = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err().to_string();
    assert!(msg.contains("model.json") && msg.contains("64 hex digits"), "{msg}");
    // A damaged key (one bit: model.mpk -> model.mpj) or an emptied map does not switch
    // verification off.
    let digest = "0".repeat(64);
    for (json, needle) in [
        (format!(r#"{{"sha256": {{"model.mpj": "{digest}", "model.safetensors": "{digest}"}}}}"#), "unknown file `model.mpj`"),
        (r#"{"sha256": {}}"#.to_string(), "records no digest for model.mpk"),
    ] {
        std::fs::write(&manifest, json).unwrap();
        let msg = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err().to_string();
        assert!(msg.contains(needle), "{msg}");
    }
    for (json, needle) in [
        (r#"{"colour": 1}"#, "unknown field `colour`; expected one of: classes, conv1_channels"),
        (r#"{"colour": 1}"#, "kernel_size, dataset, class_names, sha256"),
        (r#"{"class_names": ["a", "b"]}"#, "lists 2 names for a network of 10 classes"),
        (r#"{"class_names": "digits"}"#, "must be a list of names"),
        (r#"{"dataset": 7}"#, "must be a dataset name"),
        (r#"{"hidden": 1024, "hidden": 512}"#, "the key `hidden` appears twice in one object"),
        (r#"{"class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", " 3"]}"#, "names classes 3 and 9 alike (\"3\" and \" 3\")"),
    ] {
        std::fs::write(&manifest, json).unwrap();
        let msg = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err().to_string();
        assert!(msg.contains(needle), "{json}: {msg}");
    }
    // A name of a hundred thousand characters is quoted cut short, with its length.
    let long = "x".repeat(100_000);
    std::fs::write(&manifest, serde_json::json!({ "class_names": vec![long; 10] }).to_string()).unwrap();
    let msg = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err().to_string();
    assert!(msg.len() < 500 && msg.contains(&format!("names classes 0 and 1 alike (\"{}\"... (100000 characters)", "x".repeat(40))), "{}", &msg[..msg.len().min(600)]);
    // Class names that do not fit the network are never written.
    let err = artifact::save_dir(&model, &Manifest::new(config.clone(), "mnist", vec!["a".into()]), dir.path()).unwrap_err();
    assert!(err.to_string().contains("lists 1 names for a network of 10 classes"), "{err}");
}

#[test]
fn an_unfinished_run_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    // What a path that is no model folder is, said (not the OS's "No such file" of model.json).
    let file = dir.path().join("model.mpk");
    std::fs::write(&file, b"weights").unwrap();
    for (path, why) in [(dir.path().to_path_buf(), "holds no model.json"), (dir.path().join("missing"), "no such directory"), (file.clone(), "a file, not a directory")] {
        let err = artifact::load_dir::<Flex>(&path, &device).unwrap_err();
        assert!(matches!(&err, Error::NotAModel { dir, why: w } if *dir == path && *w == why), "{err}");
        assert_eq!(err.to_string(), format!("{}: {why}; expected a trained model's artifact directory (the folder training writes, with model.json and model.mpk)", path.display()));
    }
    std::fs::remove_file(&file).unwrap();
    std::fs::write(dir.path().join(artifact::CHECKPOINT), b"step").unwrap();
    let err = artifact::load_dir::<Flex>(dir.path(), &device).unwrap_err();
    assert!(matches!(&err, Error::UnfinishedRun { dir: d } if d == dir.path()), "{err}");
    assert!(err.to_string().contains("finish it by resuming its training") && !err.to_string().contains("--"), "{err}");
}

#[test]
fn non_finite_weights_are_never_written_or_loaded() {
    use burn::module::Param;
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let device = Default::default();
    let config = CnnConfig::new();
    let mut model = config.init::<Flex>(5, &device).unwrap();
    assert_eq!(weights::first_non_finite(&model), None);
    let w = model.fc2.weight.val();
    model.fc2.weight = Param::from_tensor(w.clone().slice_assign([3..4, 2..3], Tensor::full([1, 1], f32::INFINITY, &device)));
    assert_eq!(weights::first_non_finite(&model).as_deref(), Some("fc2.weight"));
    let dir = tempfile::tempdir().unwrap();
    for err in [
        artifact::save_dir(&model, &Manifest::new(config.clone(), "mnist", (0..10).map(|c| c.to_string()).collect()), dir.path()).unwrap_err(),
        weights::save(&model, &dir.path().join("m.mpk")).unwrap_err(),
        weights::export_safetensors(&model, &dir.path().join("m.safetensors")).unwrap_err(),
    ] {
        assert!(matches!(err, Error::NonFinite { ref tensor, .. } if tensor == "fc2.weight"), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a file was written");

    // A file written by other means (an earlier version, another program) is refused.
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder.record(model.clone().into_record(), ()).unwrap();
    let path = dir.path().join("nan.mpk");
    std::fs::write(&path, bytes).unwrap();
    let err = weights::load::<Flex>(&config, &path, &device).unwrap_err();
    assert!(err.to_string().contains("nan.mpk: tensor `fc2.weight` holds NaN or infinite values"), "{err}");
}

#[test]
fn only_this_programs_stale_temporary_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let live = artifact::temp_file_in(dir.path(), ".png").unwrap();
    let name = live.path().file_name().unwrap().to_str().unwrap().to_string();
    assert!(mnist_fs::is_temp_name(&name, mnist_fs::TEMP_PREFIX, ".png"), "{name}");
    for name in [".tmp-Ab12Cd", ".tmp-Ab12Cd.zip", ".tmp-short", "x.tmp-Ab12Cd", "model.mpk"] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let removed = artifact::remove_stale_temps(dir.path()).unwrap();
    let mut removed: Vec<String> = removed.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    removed.sort();
    let mut expected = vec![".tmp-Ab12Cd".to_string(), name];
    expected.sort();
    assert_eq!(removed, expected);
    for kept in [".tmp-Ab12Cd.zip", ".tmp-short", "x.tmp-Ab12Cd", "model.mpk"] {
        assert!(dir.path().join(kept).exists(), "{kept}");
    }
}


/// The network says which implementation runs each part, as the dispatch decides it.
#[test]
fn the_network_says_which_kernels_it_runs() {
    let flex = CnnConfig::new().init::<Flex>(1, &Default::default()).unwrap();
    let expected = if cfg!(feature = "flex") {
        "convolution blocks: fused flex kernels; fully connected: own flex kernels"
    } else {
        "convolution blocks: Burn's operations; fully connected: Burn's operations"
    };
    assert_eq!(flex.kernels_in_use().to_string(), expected);
    let burn = "convolution blocks: Burn's operations; fully connected: Burn's operations";
    assert_eq!(flex.with_kernels(Kernels::Burn).kernels_in_use().to_string(), burn);
    let nd = CnnConfig::new().init::<NdArray>(1, &Default::default()).unwrap();
    assert_eq!(nd.kernels_in_use().to_string(), burn);
    let im2col = "convolution blocks: im2col + matmul (Burn tensor operations); fully connected: Burn's operations";
    assert_eq!(nd.with_kernels(Kernels::Im2col).kernels_in_use().to_string(), im2col);
}

#[test]
fn an_evaluation_on_another_dataset_has_its_own_file() {
    use crate::artifact::{EVALUATION, evaluation_file};
    assert_eq!(evaluation_file(Some("mnist"), "mnist"), EVALUATION);
    assert_eq!(evaluation_file(None, "fashion"), EVALUATION);
    assert_eq!(evaluation_file(Some("mnist"), "fashion"), "eval-fashion.json");
    assert_eq!(evaluation_file(Some("fashion"), "sample"), "eval-sample.json");
}
