// A trained NCA, live in the browser (written by nca export --format web).
//
// The state lives on the GPU as ceil(C / 4) RGBA float textures; each step is two fragment
// shader passes written for this model at load time: the update (perceive, MLP, fire mask)
// into a scratch set of textures, then the alive masking into the next state. The fire mask
// is a hash of (seed, step, cell), which nca_cli.export.web_page.hash_fire computes the same
// way, so a page and the PyTorch step can be compared step for step. window.nca is the API
// the controls (and the tests) use.
'use strict';
(() => {
  const M = window.NCA_MODEL;
  const query = new URLSearchParams(location.search);
  const W = M.width, H = M.height, C = M.channels, T = Math.ceil(C / 4);
  const FIXED = M.fixed, U = C - FIXED, F = M.convolutions.reduce((n, c) => n + c.features, 0);
  const errorBox = document.getElementById('error');

  function fail(message) {
    errorBox.textContent = message;
    window.nca = { ready: false, error: message };
    throw new Error(message);
  }

  function floats(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  function base64(array) {
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  const range = (n) => Array.from({ length: n }, (_, i) => i);
  const glFloat = (v) => (Number.isInteger(v) ? v.toFixed(1) : String(Math.fround(v)));

  // Every weight in one RGBA float texture, each table starting at a texel; the shaders read
  // texel i at (i % 1024, i / 1024). The MLP's rows and a full convolution's taps are padded
  // to whole texels over their inputs, so that four multiply-adds take one fetch and a dot.
  const TEXELS_A_ROW = 1024;
  const tables = [];
  let texelCount = 0;
  function place(array) {
    const at = texelCount;
    tables.push([at, array]);
    texelCount += Math.ceil(array.length / 4);
    return at;
  }
  // (rows, inputs) row-major -> (rows, ceil(inputs / 4) * 4), zero-padded.
  function padRows(array, rows, inputs) {
    const width = Math.ceil(inputs / 4) * 4, out = new Float32Array(rows * width);
    for (let r = 0; r < rows; r++) out.set(array.subarray(r * inputs, (r + 1) * inputs), r * width);
    return out;
  }
  const convs = M.convolutions.map((c) => {
    const w = floats(c.weight), k2 = c.kernel * c.kernel;
    let packed = w; // depthwise: (features, k, k), read one weight at a time
    if (!c.depthwise) { // (features, C, k, k) -> (features, k, k, C padded)
      const byTap = new Float32Array(c.features * k2 * C);
      for (let o = 0; o < c.features; o++) for (let i = 0; i < C; i++) for (let t = 0; t < k2; t++) {
        byTap[(o * k2 + t) * C + i] = w[(o * C + i) * k2 + t];
      }
      packed = padRows(byTap, c.features * k2, C);
    }
    return { ...c, w: place(packed), b: c.bias ? place(floats(c.bias)) : -1 };
  });
  const layers = M.layers.map((l) => ({
    ...l,
    w: place(padRows(floats(l.weight), l.outputs, l.inputs)),
    b: place(floats(l.bias)),
  }));
  const weightData = new Float32Array(4 * TEXELS_A_ROW * Math.max(1, Math.ceil(texelCount / TEXELS_A_ROW)));
  for (const [at, array] of tables) weightData.set(array, 4 * at);

  // ---- GLSL, written for this model -------------------------------------------------------
  const HEADER = '#version 300 es\nprecision highp float;\nprecision highp int;\nprecision highp sampler2D;\n';
  const VERTEX = '#version 300 es\nvoid main() {\n  vec2 p = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));\n  gl_Position = vec4(p * 2.0 - 1.0, 0.0, 1.0);\n}\n';
  const samplers = (name) => range(T).map((t) => `uniform sampler2D ${name}${t};`).join('\n') + '\n';
  const outputs = range(T).map((t) => `layout(location = ${t}) out vec4 o${t};`).join('\n') + '\n';
  const PADDING = {
    zeros: 'return (i < 0 || i >= n) ? -1 : i;',
    circular: 'return ((i % n) + n) % n;',
    reflect: 'if (i < 0) i = -i;\n  if (i >= n) i = 2 * (n - 1) - i;\n  return i;',
  }[M.padding];
  const COMMON = `const int W = ${W};\nconst int H = ${H};\n` +
    `int border(int i, int n) {\n  ${PADDING}\n}\n` +
    'ivec2 cellAt(ivec2 p) {\n  ivec2 q = ivec2(border(p.x, W), border(p.y, H));\n' +
    '  return (q.x < 0 || q.y < 0) ? ivec2(-1) : q;\n}\n';
  // A cell's C channels from the textures `name`0.. into `cell`.
  const loader = (name) => `void load_${name}(ivec2 q, out float cell[${C}]) {\n` +
    range(T).map((t) => `  vec4 t${t} = texelFetch(${name}${t}, q, 0);\n` +
      range(4).filter((i) => 4 * t + i < C).map((i) => `  cell[${4 * t + i}] = t${t}[${i}];\n`).join('')).join('') +
    '}\n';
  const ERF = 'float erf_(float x) {\n  float s = sign(x), a = abs(x), t = 1.0 / (1.0 + 0.3275911 * a);\n' +
    '  float y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);\n' +
    '  return s * y;\n}\n';
  const ACTIVATIONS = {
    relu: 'max(v, 0.0)',
    gelu: '0.5 * v * (1.0 + erf_(v * 0.70710678118654752))',
    silu: 'v / (1.0 + exp(-v))',
    tanh: 'tanh(v)',
    elu: '(v > 0.0 ? v : exp(v) - 1.0)',
    leaky_relu: '(v > 0.0 ? v : 0.01 * v)',
    'leaky_relu_0.2': '(v > 0.0 ? v : 0.2 * v)',
  };
  const activation = (name, fn) => `float ${fn}(float v) { return ${name ? ACTIVATIONS[name] : 'v'}; }\n`;

  function updateShader() {
    let src = HEADER + samplers('u_s') + 'uniform sampler2D u_w;\nuniform uint u_seed;\nuniform uint u_step;\n' +
      outputs + COMMON + loader('u_s') + ERF + activation(M.activation, 'act');
    src += 'uint pcg(uint v) {\n  uint s = v * 747796405u + 2891336453u;\n' +
      '  uint w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;\n  return (w >> 22u) ^ w;\n}\n';
    src += M.fire_rate >= 1 ? 'bool fires(ivec2 p) { return true; }\n'
      : 'bool fires(ivec2 p) {\n  uint h = pcg(uint(p.x) + pcg(uint(p.y) + pcg(u_step + u_seed)));\n' +
        `  return float(h >> 8u) / 16777216.0 < ${glFloat(M.fire_rate)};\n}\n`;
    src += `vec4 texel(int i) { return texelFetch(u_w, ivec2(i % ${TEXELS_A_ROW}, i / ${TEXELS_A_ROW}), 0); }\n` +
      '// Weight i of the table at texel `at`.\nfloat weight(int at, int i) { return texel(at + (i >> 2))[i & 3]; }\n';
    convs.forEach((c, j) => { src += activation(c.activation, `conv_act${j}`); });
    src += `void main() {\n  ivec2 p = ivec2(gl_FragCoord.xy);\n  float s[${C}];\n  load_u_s(p, s);\n` +
      `  float dx[${U}];\n  for (int u = 0; u < ${U}; u++) dx[u] = 0.0;\n  if (fires(p)) {\n` +
      `    float f[${F}];\n    float cell[${C}];\n    vec4 tiles[${T}];\n`;
    let offset = 0;
    convs.forEach((c, j) => {
      const k = c.kernel, d = c.dilation, r = (d * (k - 1)) / 2;
      src += `    for (int o = 0; o < ${c.features}; o++) f[${offset} + o] = ${c.b >= 0 ? `weight(${c.b}, o)` : '0.0'};\n` +
        `    for (int ky = 0; ky < ${k}; ky++) for (int kx = 0; kx < ${k}; kx++) {\n` +
        `      ivec2 q = cellAt(p + ivec2(kx * ${d} - ${r}, ky * ${d} - ${r}));\n` +
        '      if (q.x < 0) continue;\n';
      if (c.depthwise) {
        src += '      load_u_s(q, cell);\n' +
          `      for (int o = 0; o < ${c.features}; o++) f[${offset} + o] += ` +
          `weight(${c.w}, (o * ${k} + ky) * ${k} + kx) * cell[o / ${c.features / C}];\n`;
      } else {
        src += range(T).map((t) => `      tiles[${t}] = texelFetch(u_s${t}, q, 0);\n`).join('') +
          `      int tap = ky * ${k} + kx;\n` +
          `      for (int o = 0; o < ${c.features}; o++) for (int j = 0; j < ${T}; j++) f[${offset} + o] += ` +
          `dot(texel(${c.w} + (o * ${k * k} + tap) * ${T} + j), tiles[j]);\n`;
      }
      src += `    }\n    for (int o = 0; o < ${c.features}; o++) f[${offset} + o] = conv_act${j}(f[${offset} + o]);\n`;
      offset += c.features;
    });
    // Each layer's input as whole texels (zero-padded), then four multiply-adds a fetch.
    const packed = (name, n) => `    vec4 ${name}4[${Math.ceil(n / 4)}];\n` + range(Math.ceil(n / 4)).map((j) =>
      `    ${name}4[${j}] = vec4(${range(4).map((i) => (4 * j + i < n ? `${name}[${4 * j + i}]` : '0.0')).join(', ')});\n`).join('');
    let input = 'f', inputs = F;
    layers.forEach((l, j) => {
      const last = j === layers.length - 1, out = last ? 'dx' : `h${j}`, n = Math.ceil(l.inputs / 4);
      src += packed(input, inputs);
      if (!last) src += `    float h${j}[${l.outputs}];\n`;
      src += `    for (int o = 0; o < ${l.outputs}; o++) {\n      float sum = weight(${l.b}, o);\n` +
        `      for (int i = 0; i < ${n}; i++) sum += dot(texel(${l.w} + o * ${n} + i), ${input}4[i]);\n` +
        `      ${out}[o] = ${last ? 'sum' : 'act(sum)'};\n    }\n`;
      input = out;
      inputs = l.outputs;
    });
    src += '  }\n';
    range(T).forEach((t) => {
      const parts = range(4).map((i) => {
        const c = 4 * t + i;
        if (c >= C) return '0.0';
        return c < FIXED ? `s[${c}]` : `s[${c}] + dx[${c - FIXED}]`;
      });
      src += `  o${t} = vec4(${parts.join(', ')});\n`;
    });
    return src + '}\n';
  }

  function aliveShader() {
    const a = M.alive_channel, tile = a >> 2, comp = a & 3;
    const alive = (name) => `bool alive_${name}(ivec2 p) {\n` + (M.alive_pool
      ? '  float most = -3.4e38;\n  for (int dy = -1; dy <= 1; dy++) for (int dx = -1; dx <= 1; dx++) {\n' +
        '    ivec2 q = cellAt(p + ivec2(dx, dy));\n' +
        `    most = max(most, q.x < 0 ? 0.0 : texelFetch(${name}${tile}, q, 0)[${comp}]);\n  }\n` +
        `  return most > ${glFloat(M.alive_threshold)};\n`
      : `  return texelFetch(${name}${tile}, p, 0)[${comp}] > ${glFloat(M.alive_threshold)};\n`) + '}\n';
    let src = HEADER + samplers('u_s') + samplers('u_n') + outputs + COMMON + alive('u_s') + alive('u_n');
    src += 'void main() {\n  ivec2 p = ivec2(gl_FragCoord.xy);\n  bool keep = alive_u_s(p) && alive_u_n(p);\n';
    range(T).forEach((t) => {
      const kept = range(4).map((i) => (4 * t + i < FIXED ? '1.0' : 'k')).join(', ');
      src += `  { float k = keep ? 1.0 : 0.0; o${t} = texelFetch(u_n${t}, p, 0) * vec4(${kept}); }\n`;
    });
    return src + '}\n';
  }

  function editShader() {
    // Erases the cells within u_radius of the segment u_from-u_to (a brush stroke).
    let src = HEADER + samplers('u_s') +
      'uniform vec2 u_from;\nuniform vec2 u_to;\nuniform float u_radius;\nuniform int u_condition;\n' + outputs;
    src += 'void main() {\n  ivec2 p = ivec2(gl_FragCoord.xy);\n  vec2 c = vec2(p) + 0.5, d = u_to - u_from;\n' +
      '  float t = dot(d, d) > 0.0 ? clamp(dot(c - u_from, d) / dot(d, d), 0.0, 1.0) : 0.0;\n' +
      '  bool erased = u_radius > 0.0 && distance(c, u_from + t * d) < u_radius;\n';
    range(T).forEach((t) => {
      src += `  { vec4 v = texelFetch(u_s${t}, p, 0);\n`;
      range(4).forEach((i) => {
        const c = 4 * t + i;
        if (c >= FIXED && c < C) src += `    if (erased) v[${i}] = 0.0;\n`;
        if (c >= M.inputs && c < M.inputs + M.conditions) {
          src += `    if (u_condition >= 0) v[${i}] = u_condition == ${c - M.inputs} ? 1.0 : 0.0;\n`;
        }
      });
      src += `    o${t} = v; }\n`;
    });
    return src + '}\n';
  }

  function displayShader() {
    const v = FIXED, chan = (c) => `texelFetch(u_s${c >> 2}, cell, 0)[${c & 3}]`;
    let src = HEADER + samplers('u_s') + `uniform float u_zoom;\nout vec4 colour;\nconst int H = ${H};\n`;
    src += 'void main() {\n  ivec2 cell = ivec2(int(gl_FragCoord.x / u_zoom), H - 1 - int(gl_FragCoord.y / u_zoom));\n';
    if (M.visible >= 3) {
      const alpha = M.alpha_channel === null ? '1.0' : `clamp(${chan(M.alpha_channel)}, 0.0, 1.0)`;
      src += `  vec3 rgb = vec3(${chan(v)}, ${chan(v + 1)}, ${chan(v + 2)});\n  float a = ${alpha};\n` +
        '  colour = vec4(clamp(1.0 - a + rgb, 0.0, 1.0), 1.0);\n';
    } else {
      src += `  colour = vec4(vec3(clamp(${chan(v)}, 0.0, 1.0)), 1.0);\n`;
    }
    return src + '}\n';
  }

  // ---- WebGL2 plumbing --------------------------------------------------------------------
  const canvas = document.getElementById('canvas');
  const zoom = Math.max(1, Math.floor(512 / Math.max(W, H)));
  canvas.width = W * zoom;
  canvas.height = H * zoom;
  const gl = canvas.getContext('webgl2', { preserveDrawingBuffer: true, antialias: false });
  if (!gl) fail('This browser has no WebGL2, which the NCA needs.');
  if (!gl.getExtension('EXT_color_buffer_float')) fail('This GPU cannot render to float textures (EXT_color_buffer_float).');
  if (T > gl.getParameter(gl.MAX_DRAW_BUFFERS)) {
    fail(`The NCA has ${C} channels: ${T} render targets, more than this GPU's ${gl.getParameter(gl.MAX_DRAW_BUFFERS)}.`);
  }

  function program(fragment) {
    const p = gl.createProgram();
    for (const [type, src] of [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, fragment]]) {
      const s = gl.createShader(type);
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) fail('shader: ' + gl.getShaderInfoLog(s) + '\n' + src);
      gl.attachShader(p, s);
    }
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) fail('program: ' + gl.getProgramInfoLog(p));
    return p;
  }

  function texture(width, height, format, type, data) {
    const t = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, t);
    gl.texImage2D(gl.TEXTURE_2D, 0, format, width, height, 0, gl.RGBA, type, data);
    for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.NEAREST], [gl.TEXTURE_MAG_FILTER, gl.NEAREST],
      [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) {
      gl.texParameteri(gl.TEXTURE_2D, k, v);
    }
    return t;
  }

  function stateSet() {
    const tiles = range(T).map(() => texture(W, H, gl.RGBA32F, gl.FLOAT, null));
    const fb = gl.createFramebuffer();
    gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
    tiles.forEach((t, i) => gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0 + i, gl.TEXTURE_2D, t, 0));
    gl.drawBuffers(range(T).map((i) => gl.COLOR_ATTACHMENT0 + i));
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) fail('the state framebuffer is incomplete');
    return { tiles, fb };
  }

  const weights = texture(TEXELS_A_ROW, weightData.length / (4 * TEXELS_A_ROW), gl.RGBA32F, gl.FLOAT, weightData);
  const programs = {
    update: program(updateShader()),
    alive: M.alive_channel === null ? null : program(aliveShader()),
    edit: program(editShader()),
    display: program(displayShader()),
  };
  let current = stateSet(), other = stateSet();
  const scratch = stateSet();

  // Draw `prog` into `target` (a state set, or null for the canvas) with `inputs` (uniform
  // prefix -> state set) bound and `uniforms` ({name: [setter, value]}).
  function pass(prog, target, inputs, uniforms) {
    gl.useProgram(prog);
    let unit = 0;
    const bind = (name, tex) => {
      gl.activeTexture(gl.TEXTURE0 + unit);
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.uniform1i(gl.getUniformLocation(prog, name), unit++);
    };
    for (const [prefix, set] of Object.entries(inputs)) set.tiles.forEach((t, i) => bind(prefix + i, t));
    if (prog === programs.update) bind('u_w', weights);
    for (const [name, [setter, ...value]] of Object.entries(uniforms)) gl[setter](gl.getUniformLocation(prog, name), ...value);
    gl.bindFramebuffer(gl.FRAMEBUFFER, target ? target.fb : null);
    if (target) gl.viewport(0, 0, W, H);
    else gl.viewport(0, 0, canvas.width, canvas.height);
    gl.drawArrays(gl.TRIANGLES, 0, 3);
  }

  const seed = Number(query.get('seed') || 0) >>> 0;
  let steps = 0;

  function stepOnce() {
    const uniforms = { u_seed: ['uniform1ui', seed], u_step: ['uniform1ui', steps] };
    if (programs.alive) {
      pass(programs.update, scratch, { u_s: current }, uniforms);
      pass(programs.alive, other, { u_s: current, u_n: scratch }, {});
    } else {
      pass(programs.update, other, { u_s: current }, uniforms);
    }
    [current, other] = [other, current];
    steps += 1;
  }

  function edit(from, to, radius, condition) {
    pass(programs.edit, other, { u_s: current }, {
      u_from: ['uniform2f', from[0], from[1]],
      u_to: ['uniform2f', to[0], to[1]],
      u_radius: ['uniform1f', radius],
      u_condition: ['uniform1i', condition],
    });
    [current, other] = [other, current];
  }

  function render() {
    pass(programs.display, null, { u_s: current }, { u_zoom: ['uniform1f', zoom] });
  }

  function upload(state) {
    const tile = new Float32Array(W * H * 4);
    current.tiles.forEach((t, k) => {
      tile.fill(0);
      for (let cell = 0; cell < W * H; cell++) {
        for (let i = 0; i < 4 && 4 * k + i < C; i++) tile[cell * 4 + i] = state[cell * C + 4 * k + i];
      }
      gl.bindTexture(gl.TEXTURE_2D, t);
      gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, W, H, gl.RGBA, gl.FLOAT, tile);
    });
  }

  function readState() {
    const state = new Float32Array(W * H * C), tile = new Float32Array(W * H * 4);
    gl.bindFramebuffer(gl.FRAMEBUFFER, current.fb);
    for (let k = 0; k < T; k++) {
      gl.readBuffer(gl.COLOR_ATTACHMENT0 + k);
      gl.readPixels(0, 0, W, H, gl.RGBA, gl.FLOAT, tile);
      for (let cell = 0; cell < W * H; cell++) {
        for (let i = 0; i < 4 && 4 * k + i < C; i++) state[cell * C + 4 * k + i] = tile[cell * 4 + i];
      }
    }
    return state;
  }

  let condition = 0;
  function reset() {
    const state = new Float32Array(W * H * C);
    M.seed.index.forEach((at, i) => { state[at] = M.seed.value[i]; });
    upload(state);
    steps = 0;
    if (M.conditions > 0) edit([0, 0], [0, 0], 0, condition);
    render();
  }

  // ---- controls ------------------------------------------------------------------------------
  const speed = document.getElementById('speed'), speedValue = document.getElementById('speed-value');
  const brush = document.getElementById('brush'), stats = document.getElementById('stats');
  let running = !query.has('paused');
  const pauseButton = document.getElementById('pause');
  const showRunning = () => { pauseButton.textContent = running ? 'Pause' : 'Run'; };
  pauseButton.onclick = () => { running = !running; showRunning(); };
  document.getElementById('reset').onclick = reset;
  speedValue.textContent = speed.value;
  speed.oninput = () => { speedValue.textContent = speed.value; };
  document.getElementById('title').textContent = M.title;
  if (M.conditions > 0) {
    const select = document.getElementById('condition');
    M.condition_names.forEach((name, i) => select.add(new Option(name, String(i))));
    document.getElementById('condition-label').hidden = false;
    select.onchange = () => { condition = Number(select.value); edit([0, 0], [0, 0], 0, condition); render(); };
  }

  let stroke = null; // the last point of the drag, in cells
  function cellOf(event) {
    const box = canvas.getBoundingClientRect();
    return [((event.clientX - box.left) / box.width) * W, ((event.clientY - box.top) / box.height) * H];
  }
  function eraseTo(event) {
    const at = cellOf(event);
    edit(stroke || at, at, Number(brush.value), -1);
    stroke = at;
    render();
  }
  canvas.addEventListener('pointerdown', (e) => { canvas.setPointerCapture(e.pointerId); stroke = null; eraseTo(e); });
  canvas.addEventListener('pointermove', (e) => { if (stroke) eraseTo(e); });
  canvas.addEventListener('pointerup', () => { stroke = null; });

  let shown = 0, since = performance.now(), rate = 0;
  function frame(now) {
    if (running) {
      for (let i = 0; i < Number(speed.value); i++) stepOnce();
      render();
    }
    if (now - since >= 1000) {
      rate = ((steps - shown) * 1000) / (now - since);
      shown = steps;
      since = now;
    }
    const line = `step ${steps} · ${rate.toFixed(0)} steps/s · ${W}x${H} cells, ${C} channels`;
    if (stats.textContent !== line) stats.textContent = line; // an idle page repaints nothing
    requestAnimationFrame(frame);
  }

  reset();
  showRunning();
  requestAnimationFrame(frame);

  window.nca = {
    ready: true,
    model: { width: W, height: H, channels: C, zoom, seed },
    get steps() { return steps; },
    get running() { return running; },
    pause() { running = false; showRunning(); },
    play() { running = true; showRunning(); },
    step(n = 1) { for (let i = 0; i < n; i++) stepOnce(); render(); return steps; },
    reset,
    // Erase the cells within `radius` of (x, y), or of the segment to (x2, y2).
    erase(x, y, radius, x2 = x, y2 = y) { edit([x, y], [x2, y2], radius, -1); render(); },
    setCondition(k) { condition = k; edit([0, 0], [0, 0], 0, k); render(); },
    readState: () => base64(readState()),
    // A state (float32 little-endian, channels last, base64) in place of the current one.
    setState(text) { upload(floats(text)); render(); },
    stepsPerSecond: () => rate,
  };
})();
