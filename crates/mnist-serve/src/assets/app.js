// The draw-a-digit page of `mnist serve`: draw on the pad (mouse, pen or touch, through
// pointer events) or pick or drop an image file; the pad is sent to POST /api/predict as
// a PNG, preprocessed by the server as `mnist predict` does, and the answer is shown as
// the 28x28 image the network saw and ten probability bars.
"use strict";

(function () {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const seen = document.getElementById("seen");
  const seenCtx = seen.getContext("2d");
  const bars = document.getElementById("bars");
  const answer = document.getElementById("answer");
  const status = document.getElementById("status");
  const modelLine = document.getElementById("model-line");
  const drop = document.getElementById("drop");
  const dropHint = document.getElementById("drop-hint");
  const fileInput = document.getElementById("file");

  // The pen: about a tenth of the pad, as MNIST's strokes are of its 28 pixels.
  const PEN = pad.width / 14;
  // Least time between two predictions while drawing, in milliseconds.
  const INTERVAL = 60;

  let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
  let strokes = 0; // strokes (or an opened image) on the pad since it was cleared
  let drawing = null; // the pointer drawing, and where it was
  let inFlight = false;
  let again = false; // the pad changed while a prediction was in flight
  let lastSent = 0;
  let timer = null;
  let generation = 0; // bumped by Clear, so an answer to an old pad is dropped
  let pendingFile = null; // an opened file, sent as it is instead of the pad
  const PROMPT = "Nothing drawn yet";

  function blankPad() {
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.strokeStyle = "#000000";
    ctx.fillStyle = "#000000";
    ctx.lineWidth = PEN;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  }

  function makeBars() {
    bars.replaceChildren();
    classes.forEach((name, i) => {
      const li = document.createElement("li");
      li.dataset.class = String(i);
      li.dataset.probability = "0";
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = "";
      li.append(label, track, value);
      bars.append(li);
    });
  }

  function showBars(probabilities, winner) {
    Array.from(bars.children).forEach((li, i) => {
      const p = probabilities ? probabilities[i] : 0;
      li.dataset.probability = String(p);
      li.classList.toggle("winner", probabilities !== null && i === winner);
      li.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
      li.querySelector(".value").textContent = probabilities ? (100 * p).toFixed(1) + "%" : "";
      li.setAttribute("aria-label", probabilities ? `${classes[i]}: ${(100 * p).toFixed(1)} percent` : classes[i]);
    });
  }

  function showSeen(input) {
    const image = seenCtx.createImageData(28, 28);
    for (let i = 0; i < 784; i++) {
      const v = input ? input[i] : 0;
      image.data[4 * i] = v;
      image.data[4 * i + 1] = v;
      image.data[4 * i + 2] = v;
      image.data[4 * i + 3] = 255;
    }
    seenCtx.putImageData(image, 0, 0);
  }

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function setBusy() {
    document.body.dataset.busy = String(inFlight || again || timer !== null);
  }

  function reset() {
    generation += 1;
    strokes = 0;
    pendingFile = null;
    again = false;
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    blankPad();
    showSeen(null);
    showBars(null, -1);
    answer.textContent = PROMPT;
    delete answer.dataset.class;
    say("");
    setBusy();
  }

  // Asks for a prediction of the pad as it is now: at once when none is in flight and
  // the last was long enough ago, else as soon as that is so.
  function schedule() {
    if (strokes === 0) return;
    if (inFlight) {
      again = true;
    } else if (timer === null) {
      const wait = Math.max(0, lastSent + INTERVAL - performance.now());
      timer = setTimeout(() => {
        timer = null;
        send();
      }, wait);
    }
    setBusy();
  }

  function padBlob() {
    return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
  }

  async function send() {
    const mine = generation;
    inFlight = true;
    again = false;
    lastSent = performance.now();
    setBusy();
    try {
      const body = pendingFile || (await padBlob());
      const response = await fetch("/api/predict", {
        method: "POST",
        headers: { "Content-Type": body.type || "application/octet-stream" },
        body,
      });
      let reply = null;
      try {
        reply = await response.json();
      } catch (e) {
        reply = { error: `the server answered ${response.status} without JSON` };
      }
      if (mine !== generation) return;
      if (response.ok) {
        show(reply);
      } else {
        showBars(null, -1);
        showSeen(null);
        answer.textContent = "?";
        delete answer.dataset.class;
        say(reply.error || `the server answered ${response.status}`, true);
      }
    } catch (e) {
      if (mine === generation) say(`cannot reach the server: ${e.message}`, true);
    } finally {
      inFlight = false;
      document.body.dataset.predictions = String(Number(document.body.dataset.predictions) + 1);
      if (again && mine === generation) {
        again = false;
        schedule();
      }
      setBusy();
    }
  }

  function show(reply) {
    const p = reply.probabilities;
    answer.replaceChildren();
    answer.append(document.createTextNode(reply.label + " "));
    const confidence = document.createElement("span");
    confidence.className = "confidence";
    confidence.textContent = `(${(100 * p[reply.class]).toFixed(1)}%)`;
    answer.append(confidence);
    answer.dataset.class = String(reply.class);
    showBars(p, reply.class);
    showSeen(reply.input);
    say("");
  }

  // Drawing, with pointer events: mouse, pen and touch alike.
  function point(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * pad.width) / rect.width,
      y: ((event.clientY - rect.top) * pad.height) / rect.height,
    };
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    pendingFile = null;
    const at = point(event);
    drawing = { id: event.pointerId, at };
    ctx.beginPath();
    ctx.arc(at.x, at.y, PEN / 2, 0, 2 * Math.PI);
    ctx.fill();
    strokes += 1;
    schedule();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!drawing || event.pointerId !== drawing.id) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    ctx.beginPath();
    ctx.moveTo(drawing.at.x, drawing.at.y);
    for (const e of events.length ? events : [event]) {
      const at = point(e);
      ctx.lineTo(at.x, at.y);
      drawing.at = at;
    }
    ctx.stroke();
    schedule();
  });

  function endStroke(event) {
    if (!drawing || event.pointerId !== drawing.id) return;
    drawing = null;
    schedule();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  document.getElementById("clear").addEventListener("click", () => {
    reset();
    pad.focus();
  });
  pad.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Escape" || event.key === "Backspace") {
      event.preventDefault();
      reset();
    }
  });

  // Image files: picked or dropped, shown on the pad, sent as they are.
  function openFile(file) {
    if (!file) return;
    reset();
    pendingFile = file;
    strokes = 1;
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => {
      const scale = Math.min(pad.width / image.width, pad.height / image.height);
      const w = image.width * scale;
      const h = image.height * scale;
      ctx.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      URL.revokeObjectURL(url);
    };
    image.onerror = () => URL.revokeObjectURL(url);
    image.src = url;
    say(`classifying ${file.name}`);
    schedule();
  }

  fileInput.addEventListener("change", () => {
    openFile(fileInput.files[0]);
    fileInput.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
    dropHint.hidden = false;
  });
  drop.addEventListener("dragleave", () => {
    drop.classList.remove("dragging");
    dropHint.hidden = true;
  });
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    dropHint.hidden = true;
    openFile(event.dataTransfer.files[0]);
  });

  // The model: its class names (Fashion-MNIST's clothes) and what it is.
  fetch("/api/model")
    .then((response) => response.json())
    .then((model) => {
      if (Array.isArray(model.classes) && model.classes.length === 10) classes = model.classes;
      makeBars();
      showBars(null, -1);
      const parts = [`model ${model.name}`];
      if (model.dataset) parts.push(`trained on ${model.dataset}`);
      if (typeof model.test_accuracy === "number") parts.push(`test accuracy ${(100 * model.test_accuracy).toFixed(2)}%`);
      parts.push(`running on ${model.backend}`);
      modelLine.textContent = parts.join(", ");
      if (model.dataset === "fashion") {
        document.querySelector("h1").textContent = "Draw a piece of clothing";
      }
    })
    .catch((e) => {
      modelLine.textContent = `cannot read the model: ${e.message}`;
    });

  makeBars();
  reset();
})();
