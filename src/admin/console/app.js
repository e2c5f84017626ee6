// tokengate console: a client of the admin API (SPEC §4) and nothing else.
//
// Rules this file keeps:
// - Every piece of API data reaches the page as text (textContent / createTextNode /
//   setAttribute on plain attributes). Nothing here ever assigns innerHTML or outerHTML,
//   calls insertAdjacentHTML or document.write, or builds a URL from data except through
//   encodeURIComponent.
// - The admin key lives in this tab's sessionStorage only, is sent as `Authorization: Bearer`
//   to same-origin /v1 requests, and is removed on sign-out or when the gateway refuses it.
// - A token secret exists in the page only while the secret dialog is open.
(function () {
  'use strict';

  var KEY_STORE = 'tokengate.adminKey';
  // The API's largest page of tokens: a reload after a change asks for every row shown.
  var MAX_TOKEN_LIMIT = 10000;
  // The API's largest audit list (it has no cursor: "show more" asks for a longer list).
  var MAX_AUDIT_LIMIT = 1000;
  // The configured access types ({name, label}, config order), from /v1/access-types once
  // signed in: check boxes, badges and labels all come from it.
  var ACCESS = null;

  function $(id) { return document.getElementById(id); }

  // --- DOM helpers (text only) ---

  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        var v = props[k];
        if (v === undefined || v === null || v === false) return;
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = String(v);
        else if (k === 'checked' || k === 'disabled' || k === 'value' || k === 'type' || k === 'href') node[k] = v;
        else node.setAttribute(k, String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === undefined || c === null || c === false) continue;
      node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function setText(id, text) {
    $(id).textContent = text || '';
  }

  function accessType(name) {
    for (var i = 0; ACCESS && i < ACCESS.length; i++) if (ACCESS[i].name === name) return ACCESS[i];
    return null;
  }

  // A type no longer configured is shown by its name: it grants nothing.
  function accessLabel(a) {
    var t = accessType(a);
    return t ? t.label : a + ' (not configured)';
  }

  // One check box per configured type, plus the types in `held` that are no longer
  // configured (so a token can keep or drop them; the API never lets one be added).
  function renderAccessChoices(prefix, held) {
    var box = $(prefix + '-options');
    clear(box);
    var choices = (ACCESS || []).map(function (t) { return [t.name, t.label]; });
    (held || []).forEach(function (n) {
      if (!accessType(n)) choices.push([n, accessLabel(n)]);
    });
    choices.forEach(function (c) {
      box.appendChild(el('label', { class: 'check' },
        el('input', { type: 'checkbox', name: 'access', value: c[0], id: prefix + '-' + c[0], checked: (held || []).indexOf(c[0]) >= 0 }),
        ' ' + c[1]));
    });
  }

  function checkedAccess(prefix) {
    var boxes = $(prefix + '-options').querySelectorAll('input[type=checkbox]');
    return Array.prototype.filter.call(boxes, function (b) { return b.checked; })
      .map(function (b) { return b.value; });
  }

  function pad(n) { return n < 10 ? '0' + n : String(n); }

  // --- times: relative text, the exact UTC time on hover ---

  // "Now" for relative times is this browser's clock, always read through Date.now() (the
  // browser tests pin it to the gateway's manual clock).
  function nowMs() { return Date.now(); }

  // "2025-03-04 09:15:07 UTC": the exact instant, whatever the browser's time zone.
  function exactText(d) {
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) +
      ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes()) + ':' + pad(d.getUTCSeconds()) + ' UTC';
  }

  // Unit, its length in seconds, and the distance (in seconds) up to which it is used.
  // Days run to 100 so that the lapse (30 days) and expiry presets (90 days) read exactly.
  var UNITS = [
    ['minute', 60, 45 * 60],
    ['hour', 3600, 22 * 3600],
    ['day', 86400, 100 * 86400],
    ['month', 2629746, 18 * 2629746],
    ['year', 31556952, Infinity]
  ];

  // "just now", "in 5 hours", "3 days ago": `ms` relative to `ref` (both epoch ms).
  function relativeText(ms, ref) {
    var secs = (ms - ref) / 1000;
    var abs = Math.abs(secs);
    if (abs < 45) return 'just now';
    for (var i = 0; i < UNITS.length; i++) {
      if (abs < UNITS[i][2]) {
        var n = Math.max(1, Math.round(abs / UNITS[i][1]));
        var phrase = n + ' ' + UNITS[i][0] + (n === 1 ? '' : 's');
        return secs < 0 ? phrase + ' ago' : 'in ' + phrase;
      }
    }
    return '';
  }

  // A <time> showing `value` (an RFC 3339 string from the API) relative to now, with the
  // exact UTC time as its tooltip; `none` when there is no time. With `exact`, the exact time
  // follows as visible text too (the token page's details, where there is room for it and a
  // touch screen has no hover).
  function when(value, none, exact) {
    if (!value) return el('span', { class: 'muted', text: none || '—' });
    var d = new Date(value);
    if (isNaN(d.getTime())) return el('span', { text: value });
    var t = el('time', { class: 'rel', datetime: value, title: exactText(d), text: relativeText(d.getTime(), nowMs()) });
    if (!exact) return t;
    return el('span', { class: 'when-both' }, t, el('span', { class: 'exact', text: exactText(d) }));
  }

  // Relative texts age: refresh them all now and then (from their own datetime attribute).
  function refreshTimes() {
    var ref = nowMs();
    Array.prototype.forEach.call(document.querySelectorAll('time.rel'), function (t) {
      var ms = Date.parse(t.getAttribute('datetime'));
      if (!isNaN(ms)) t.textContent = relativeText(ms, ref);
    });
  }

  // "2025-03-04 10:15:07 UTC (in 1 hour)", for a sentence.
  function untilText(value) {
    var d = new Date(value);
    if (isNaN(d.getTime())) return String(value);
    return exactText(d) + ' (' + relativeText(d.getTime(), nowMs()) + ')';
  }

  function reasonText(reason) {
    if (reason === 'admin') return 'deactivated by an administrator';
    if (reason === 'idle') return 'idle: not used in time';
    if (reason === 'expired') return 'expired: past its expiry date';
    if (reason === 'revoked') return 'revoked: its secret was reported as leaked';
    return reason || '';
  }

  function statusBadge(t) {
    var active = t.status === 'active';
    return el('span', { class: 'badge ' + (active ? 'badge-active' : 'badge-inactive'), text: active ? 'Active' : 'Inactive' });
  }

  function accessBadges(list) {
    var span = el('span');
    (list || []).forEach(function (a) {
      span.appendChild(el('span', { class: 'badge badge-access', text: accessLabel(a) }));
    });
    return span;
  }

  // --- the admin API ---

  function ApiError(status, body) {
    body = body || {};
    this.status = status;
    this.code = body.error || 'error';
    this.field = body.field || null;
    this.names = Array.isArray(body.names) ? body.names : null;
    this.message = typeof body.message === 'string' ? body.message : 'The request failed (HTTP ' + status + ').';
  }

  function storedKey() {
    try { return window.sessionStorage.getItem(KEY_STORE); } catch (e) { return null; }
  }

  function request(key, method, path, body) {
    var headers = { 'Accept': 'application/json', 'Authorization': 'Bearer ' + key };
    var init = { method: method, headers: headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (resp) {
      if (resp.status === 204) return null;
      return resp.json().catch(function () { return null; }).then(function (data) {
        if (!resp.ok) throw new ApiError(resp.status, data);
        return data;
      });
    }, function () {
      throw new ApiError(0, { error: 'network', message: 'The gateway could not be reached. Check that it is running and try again.' });
    });
  }

  function api(method, path, body) {
    var key = storedKey();
    if (!key) {
      showSignin('Sign in to continue.');
      return Promise.reject(new ApiError(401, { error: 'unauthorized', message: 'Not signed in.' }));
    }
    return request(key, method, path, body).catch(function (e) {
      if (e.status === 401) {
        forgetKey();
        showSignin('The gateway refused the admin key. Sign in again.');
      }
      throw e;
    });
  }

  function tokenPath(name) {
    return '/v1/tokens/' + encodeURIComponent(name);
  }

  // --- error placement ---

  // Shows an API error next to the field it names (when the form has that field), else in
  // the form's own error line. `fields` maps API field names to input ids.
  function showFormError(prefix, e, fields) {
    var field = e.field;
    if (!field && e.code === 'name_taken') field = 'name';
    if (field === 'expires_in') field = 'expires_at';
    // A JSON path such as `rate_limit.per` is shown at its top-level field.
    if (field && !fields[field]) {
      var top = field.split(/[.[]/)[0];
      if (fields[top]) field = top;
    }
    var target = field && fields[field] ? prefix + '-' + field + '-error' : prefix + '-error';
    setText(target, e.message);
    if (field && fields[field]) {
      var input = $(fields[field]);
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  }

  function clearFormErrors(prefix, fields) {
    setText(prefix + '-error', '');
    Object.keys(fields).forEach(function (f) {
      setText(prefix + '-' + f + '-error', '');
      $(fields[f]).removeAttribute('aria-invalid');
    });
  }

  function actionMessage(e) {
    if (e.names && e.names.length) return e.message + ' Unknown: ' + e.names.join(', ') + '.';
    return e.message;
  }

  // A check made in the page before any request, placed like the API's own errors.
  function localError(field, message) {
    return new ApiError(400, { error: 'invalid_request', field: field, message: message });
  }

  // "a, b, c and 4 more": names or addresses in a confirmation text.
  function listText(items) {
    var shown = items.slice(0, 5).join(', ');
    return items.length > 5 ? shown + ' and ' + (items.length - 5) + ' more' : shown;
  }

  // --- rate limit and allow-list controls (create and edit) ---

  // The `per` values the select offers, as the API spells them back (humantime).
  var PER_PRESETS = ['1s', '1m', '1h', '1day'];

  function rateText(r) {
    if (!r) return null;
    return r.requests + ' per ' + r.per;
  }

  // Fills the requests input and the per select; a `per` set elsewhere (say "30s") gets an
  // option of its own so that saving the form unchanged keeps it.
  function fillRate(prefix, r) {
    var sel = $(prefix + '-rate-per');
    Array.prototype.slice.call(sel.querySelectorAll('option[data-extra]')).forEach(function (o) {
      sel.removeChild(o);
    });
    $(prefix + '-rate-requests').value = r ? String(r.requests) : '';
    var per = r ? r.per : '1m';
    if (PER_PRESETS.indexOf(per) < 0) sel.appendChild(el('option', { value: per, 'data-extra': 'true', text: per }));
    sel.value = per;
  }

  // `{value}`: null (no limit) or {requests, per}; `{error}` when requests is not a number.
  function rateValue(prefix) {
    var raw = $(prefix + '-rate-requests').value.trim();
    if (raw === '') return { value: null };
    if (!/^[0-9]+$/.test(raw)) {
      return { error: 'Enter a whole number of requests, or leave it empty for no limit.' };
    }
    return { value: { requests: Number(raw), per: $(prefix + '-rate-per').value } };
  }

  function sameRate(a, b) {
    if (!a || !b) return !a && !b;
    return a.requests === b.requests && a.per === b.per;
  }

  // The textarea's entries (one a line or comma-separated); null when empty (any client IP).
  function ipsValue(prefix) {
    var list = $(prefix + '-allowed-ips').value.split(/[\s,]+/).filter(function (s) { return s !== ''; });
    return list.length ? list : null;
  }

  function sameIps(a, b) {
    if (!a || !b) return !a && !b;
    return a.length === b.length && a.every(function (v, i) { return v === b[i]; });
  }

  function fillAllowedIps(prefix, list) {
    $(prefix + '-allowed-ips').value = (list || []).join('\n');
  }

  // --- state and views ---

  var state = {
    tokens: [],
    next: null,
    // The filter the loaded rows were fetched with: "load more" continues that list even if
    // the filter inputs were edited meanwhile (a new filter starts a new list).
    listQuery: null,
    // The list's order, among the rows loaded; the API itself pages by name.
    sort: { key: 'name', dir: 'asc' },
    selected: new Set(),
    listSeq: 0,
    token: null,
    ips: [],
    ipSelected: new Set(),
    tokenSeq: 0,
    audit: [],
    auditToken: '',
    auditLimit: 0,
    auditSeq: 0,
    // The rate limit and allow-list the edit form was filled with: a save sends them only
    // when the form now differs, so it never undoes a change made elsewhere meanwhile.
    editBase: { rate_limit: null, allowed_ips: null },
    // The usage chart's period: '24h' (hourly), '7d' or '30d' (daily).
    usagePeriod: '24h',
    usageSeq: 0
  };

  var VIEWS = ['view-signin', 'view-list', 'view-token', 'view-audit'];

  function showView(id) {
    VIEWS.forEach(function (v) { $(v).hidden = v !== id; });
    $('session-bar').hidden = id === 'view-signin';
    $('main-nav').hidden = id === 'view-signin';
    // The token page belongs to the token list.
    var current = id === 'view-audit' ? 'nav-audit' : 'nav-tokens';
    ['nav-tokens', 'nav-audit'].forEach(function (n) {
      if (n === current) $(n).setAttribute('aria-current', 'page');
      else $(n).removeAttribute('aria-current');
    });
  }

  function focusHeading(id) {
    var h = $(id);
    h.setAttribute('tabindex', '-1');
    h.focus();
  }

  function forgetKey() {
    try { window.sessionStorage.removeItem(KEY_STORE); } catch (e) { /* nothing stored */ }
    ACCESS = null;
    state.tokens = [];
    state.next = null;
    state.listQuery = null;
    state.audit = [];
    state.selected.clear();
    state.token = null;
    state.ips = [];
    state.ipSelected.clear();
    clear($('token-rows'));
    clear($('audit-rows'));
    clear($('ip-rows'));
    clear($('token-facts'));
    clearUsage();
    ['create-dialog', 'secret-dialog', 'confirm-dialog'].forEach(function (id) {
      if ($(id).open) $(id).close();
    });
    $('secret-value').value = '';
  }

  function showSignin(message) {
    showView('view-signin');
    document.title = 'Sign in · tokengate';
    setText('signin-error', message || '');
    $('signin-key').value = '';
    $('signin-key').focus();
  }

  function route(fromNavigation) {
    if (!storedKey()) {
      showSignin('');
      return;
    }
    if (!ACCESS) {
      // Once per sign-in: every view below needs the configured access types.
      api('GET', '/v1/access-types').then(function (d) {
        ACCESS = d.access_types;
        route(fromNavigation);
      }, function (e) {
        if (e.status === 401) return;
        showView('view-list');
        setText('list-error', 'The access types could not be loaded: ' + e.message);
      });
      return;
    }
    var hash = window.location.hash;
    var audit = /^#\/audit(?:\?(.*))?$/.exec(hash);
    if (audit) {
      showAudit(new URLSearchParams(audit[1] || '').get('token') || '', fromNavigation);
      return;
    }
    var m = /^#\/tokens\/([^/]+)$/.exec(hash);
    if (m) {
      var name;
      try { name = decodeURIComponent(m[1]); } catch (e) { name = m[1]; }
      showToken(name, fromNavigation);
    } else {
      showList(fromNavigation);
    }
  }

  // --- sign in / out ---

  function signIn(ev) {
    ev.preventDefault();
    var key = $('signin-key').value.trim();
    setText('signin-error', '');
    $('signin-key').removeAttribute('aria-invalid');
    if (!key) {
      setText('signin-error', 'Enter the admin key.');
      $('signin-key').setAttribute('aria-invalid', 'true');
      return;
    }
    $('signin-submit').disabled = true;
    request(key, 'GET', '/v1/tokens?limit=1').then(function () {
      window.sessionStorage.setItem(KEY_STORE, key);
      $('signin-key').value = '';
      route(true);
    }, function (e) {
      var msg = e.status === 401 ? 'This admin key was refused.' : e.message;
      setText('signin-error', msg);
      $('signin-key').setAttribute('aria-invalid', 'true');
      $('signin-key').focus();
    }).then(function () {
      $('signin-submit').disabled = false;
    });
  }

  function signOut() {
    forgetKey();
    if (window.location.hash) {
      history.replaceState(null, '', window.location.pathname);
    }
    showSignin('You are signed out.');
  }

  // --- token list ---

  function showList(fromNavigation) {
    showView('view-list');
    document.title = 'Application Tokens · tokengate';
    if (fromNavigation) focusHeading('list-title');
    loadList(state.listQuery ? 'reload' : 'fresh');
  }

  // `mode`: 'fresh' (a new filter or page size: the first page), 'more' (the next page of the
  // same list) or 'reload' (after a change: the same list again, as many rows as were shown).
  function loadList(mode) {
    var seq = ++state.listSeq;
    var size = Number($('page-size').value);
    var query = mode === 'fresh' || !state.listQuery
      ? { q: $('filter-q').value.trim(), status: $('filter-status').value }
      : state.listQuery;
    var append = mode === 'more' && !!state.next;
    var limit = mode === 'reload' ? Math.min(MAX_TOKEN_LIMIT, Math.max(size, state.tokens.length)) : size;
    var params = new URLSearchParams();
    if (query.q) params.set('q', query.q);
    if (query.status) params.set('status', query.status);
    params.set('limit', String(limit));
    if (append) params.set('after', state.next);
    setText('list-error', '');
    setText('filter-error', '');
    $('filter-q').removeAttribute('aria-invalid');
    $('token-table').setAttribute('aria-busy', 'true');
    return api('GET', '/v1/tokens?' + params.toString()).then(function (data) {
      if (seq !== state.listSeq) return;
      state.listQuery = query;
      state.tokens = append ? state.tokens.concat(data.tokens) : data.tokens;
      state.next = data.next;
      var present = new Set(state.tokens.map(function (t) { return t.name; }));
      state.selected.forEach(function (n) { if (!present.has(n)) state.selected.delete(n); });
      renderList();
    }, function (e) {
      if (seq !== state.listSeq || e.status === 401) return;
      if (e.field === 'q') {
        setText('filter-error', e.message);
        $('filter-q').setAttribute('aria-invalid', 'true');
      } else if (e.field === 'status') {
        setText('filter-error', e.message);
      } else {
        setText('list-error', e.message);
      }
    }).then(function () {
      if (seq === state.listSeq) $('token-table').removeAttribute('aria-busy');
    });
  }

  // --- sorting the loaded rows ---

  function timeKey(v) {
    var ms = v ? Date.parse(v) : NaN;
    return isNaN(ms) ? null : ms;
  }

  // The value a column sorts by; null sorts last in either direction.
  var SORT_KEYS = {
    name: function (t) { return t.name.toLowerCase(); },
    description: function (t) { return t.description ? t.description.toLowerCase() : null; },
    access: function (t) { return (t.access || []).map(accessLabel).join(', ').toLowerCase() || null; },
    // Active first, then the inactive ones grouped by reason.
    status: function (t) { return (t.status === 'active' ? '0' : '1') + (t.inactive_reason || ''); },
    last_used: function (t) { return timeKey(t.last_used_at); },
    // Lapses on: the idle lapse, else (already inactive) the deletion.
    lapses: function (t) { return timeKey(t.inactive_at) !== null ? timeKey(t.inactive_at) : timeKey(t.delete_at); }
  };

  function compareBy(key, dir) {
    var f = SORT_KEYS[key];
    var sign = dir === 'desc' ? -1 : 1;
    return function (a, b) {
      var x = f(a);
      var y = f(b);
      if (x !== y) {
        if (x === null) return 1;
        if (y === null) return -1;
        if (x < y) return -sign;
        if (x > y) return sign;
      }
      // Ties by name, ascending whatever the direction, so the order is stable.
      var n = a.name.toLowerCase();
      var m = b.name.toLowerCase();
      return n < m ? -1 : n > m ? 1 : 0;
    };
  }

  function sortedTokens() {
    return state.tokens.slice().sort(compareBy(state.sort.key, state.sort.dir));
  }

  // The header of the sorted column carries aria-sort; its button shows the direction.
  function renderSortHeaders() {
    Array.prototype.forEach.call($('token-table').querySelectorAll('th[data-sort]'), function (th) {
      var on = th.getAttribute('data-sort') === state.sort.key;
      if (on) th.setAttribute('aria-sort', state.sort.dir === 'asc' ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
      th.classList.toggle('sorted', on);
    });
  }

  // A click on the sorted column reverses it; on another column, sorts by it ascending.
  function sortBy(key) {
    if (!SORT_KEYS[key]) return;
    if (state.sort.key === key) state.sort.dir = state.sort.dir === 'asc' ? 'desc' : 'asc';
    else state.sort = { key: key, dir: 'asc' };
    renderList();
  }

  function renderList() {
    var body = $('token-rows');
    clear(body);
    renderSortHeaders();
    sortedTokens().forEach(function (t) {
      var selected = state.selected.has(t.name);
      var box = el('input', { type: 'checkbox', checked: selected, 'aria-label': 'Select ' + t.name, 'data-name': t.name });
      box.addEventListener('change', function () {
        if (box.checked) state.selected.add(t.name); else state.selected.delete(t.name);
        row.classList.toggle('selected', box.checked);
        renderSelection();
      });
      var status = el('td', { class: 'status' }, statusBadge(t));
      if (t.status !== 'active' && t.inactive_reason) {
        status.appendChild(el('span', { class: 'sub reason', text: reasonText(t.inactive_reason) }));
      }
      var lapses = el('td', { class: 'when lapses' }, when(t.inactive_at));
      if (!t.inactive_at && t.delete_at) {
        lapses.appendChild(el('span', { class: 'sub' }, 'deleted ', when(t.delete_at)));
      }
      var row = el('tr', { class: selected ? 'selected' : '', 'data-name': t.name },
        el('td', { class: 'col-check' }, box),
        el('td', { class: 'name' }, el('a', { href: '#/tokens/' + encodeURIComponent(t.name), text: t.name })),
        el('td', { class: 'desc' }, t.description ? t.description : el('span', { class: 'muted', text: '—' })),
        el('td', { class: 'access' }, accessBadges(t.access)),
        status,
        el('td', { class: 'when last-used' }, when(t.last_used_at, 'never')),
        lapses
      );
      body.appendChild(row);
    });
    var filtered = $('filter-q').value.trim() || $('filter-status').value;
    var empty = $('token-empty');
    empty.hidden = state.tokens.length > 0;
    empty.textContent = filtered ? 'No token matches this filter.' : 'No tokens yet. Create one with “New token”.';
    var n = state.tokens.length;
    setText('token-count', n === 0 ? '' : n + (n === 1 ? ' token' : ' tokens') + (state.next ? ' shown, more to load' : ''));
    $('load-more').hidden = !state.next;
    // Only the rows loaded are sorted: say so while the list is incomplete and its order is
    // not the API's own (by name).
    var partial = !!state.next && !(state.sort.key === 'name' && state.sort.dir === 'asc');
    $('sort-note').hidden = !partial;
    setText('sort-note', partial ? 'Sorted among the tokens loaded; load more to sort the rest in.' : '');
    renderSelection();
  }

  function renderSelection() {
    var n = state.selected.size;
    setText('list-selection', n === 0 ? 'No tokens selected' : n + ' selected');
    $('bulk-activate').disabled = n === 0;
    $('bulk-deactivate').disabled = n === 0;
    var all = $('select-all-tokens');
    all.checked = n > 0 && n === state.tokens.length;
    all.indeterminate = n > 0 && n < state.tokens.length;
  }

  function selectAllTokens() {
    var on = $('select-all-tokens').checked;
    state.selected.clear();
    if (on) state.tokens.forEach(function (t) { state.selected.add(t.name); });
    renderList();
  }

  function bulk(activate) {
    var names = Array.from(state.selected);
    if (names.length === 0) return;
    setText('bulk-error', '');
    setText('bulk-ok', '');
    if (activate) {
      runBulk(true, names);
      return;
    }
    var n = names.length;
    confirmAction('Deactivate ' + (n === 1 ? names[0] : n + ' tokens') + '?',
      (n === 1 ? 'Every request with this token' : 'Every request with ' + listText(names)) +
        ' is refused until it is activated again.',
      n === 1 ? 'Deactivate token' : 'Deactivate ' + n + ' tokens').then(function (ok) {
      if (ok) runBulk(false, names);
    });
  }

  function runBulk(activate, names) {
    $('bulk-activate').disabled = true;
    $('bulk-deactivate').disabled = true;
    api('POST', '/v1/tokens/' + (activate ? 'activate' : 'deactivate'), { names: names }).then(function (data) {
      var n = data.tokens.length;
      setText('bulk-ok', (activate ? 'Activated ' : 'Deactivated ') + n + (n === 1 ? ' token.' : ' tokens.'));
      state.selected.clear();
      return loadList('reload');
    }, function (e) {
      if (e.status !== 401) setText('bulk-error', actionMessage(e));
      renderSelection();
    });
  }

  // --- create ---

  var CREATE_FIELDS = {
    name: 'create-name', description: 'create-description', access: 'create-access-options',
    expires_at: 'create-expiry', rate_limit: 'create-rate-requests', allowed_ips: 'create-allowed-ips'
  };

  // The expiry a select (and its date input) asks for, as body fields: `null` to keep
  // (edit only), `{}` for no change of the default, else expires_in / expires_at.
  function expiryFields(prefix) {
    var v = $(prefix + '-expiry').value;
    if (v === 'keep') return null;
    if (v === 'never') return { expires_at: null };
    if (v === 'date') {
      var d = $(prefix + '-expiry-date').value;
      return { expires_at: d ? d + 'T00:00:00Z' : '' };
    }
    return { expires_in: v };
  }

  function syncExpiryDate(prefix) {
    $(prefix + '-expiry-date').hidden = $(prefix + '-expiry').value !== 'date';
  }

  function openCreate() {
    $('create-form').reset();
    renderAccessChoices('create-access', []);
    syncExpiryDate('create');
    fillRate('create', null);
    clearFormErrors('create', CREATE_FIELDS);
    $('create-dialog').showModal();
    $('create-name').focus();
  }

  function submitCreate(ev) {
    ev.preventDefault();
    clearFormErrors('create', CREATE_FIELDS);
    var body = { name: $('create-name').value, access: checkedAccess('create-access') };
    var description = $('create-description').value;
    if (description.trim() !== '') body.description = description;
    var expiry = expiryFields('create');
    if (expiry && !('expires_at' in expiry && expiry.expires_at === null)) {
      Object.keys(expiry).forEach(function (k) { body[k] = expiry[k]; });
    }
    // Sent only when filled: no limit and any client IP are the defaults.
    var rate = rateValue('create');
    if (rate.error) {
      showFormError('create', localError('rate_limit', rate.error), CREATE_FIELDS);
      return;
    }
    if (rate.value) body.rate_limit = rate.value;
    var allowed = ipsValue('create');
    if (allowed) body.allowed_ips = allowed;
    $('create-submit').disabled = true;
    api('POST', '/v1/tokens', body).then(function (created) {
      $('create-dialog').close();
      setText('bulk-ok', 'Created token ' + created.name + '.');
      setText('bulk-error', '');
      showSecret('Token ' + created.name + ' created', created.token);
      loadList('reload');
    }, function (e) {
      if (e.status !== 401) showFormError('create', e, CREATE_FIELDS);
    }).then(function () {
      $('create-submit').disabled = false;
    });
  }

  // --- the secret, shown once ---

  var secretReturnFocus = null;

  function showSecret(title, secret) {
    secretReturnFocus = document.activeElement;
    setText('secret-title', title);
    setText('secret-copy-status', '');
    $('secret-value').value = secret || '';
    $('secret-dialog').showModal();
    $('secret-copy').focus();
  }

  function copySecret() {
    var input = $('secret-value');
    var value = input.value;
    function fallback() {
      input.focus();
      input.select();
      var ok = false;
      try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
      setText('secret-copy-status', ok ? 'Copied to the clipboard.' : 'Copying is blocked here: the secret is selected, press Ctrl+C to copy it.');
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(function () {
        setText('secret-copy-status', 'Copied to the clipboard.');
      }, fallback);
    } else {
      fallback();
    }
  }

  function closeSecret() {
    $('secret-dialog').close();
  }

  function onSecretClosed() {
    // Forget the secret as soon as the dialog closes.
    $('secret-value').value = '';
    setText('secret-copy-status', '');
    if (secretReturnFocus && document.body.contains(secretReturnFocus)) secretReturnFocus.focus();
    secretReturnFocus = null;
  }

  // --- confirmation ---

  function confirmAction(title, text, okLabel) {
    return new Promise(function (resolve) {
      var d = $('confirm-dialog');
      var returnFocus = document.activeElement;
      setText('confirm-title', title);
      setText('confirm-text', text);
      setText('confirm-ok', okLabel);
      function done(v) {
        $('confirm-ok').removeEventListener('click', yes);
        $('confirm-cancel').removeEventListener('click', no);
        d.removeEventListener('cancel', no);
        if (d.open) d.close();
        if (returnFocus && document.body.contains(returnFocus)) returnFocus.focus();
        resolve(v);
      }
      function yes() { done(true); }
      function no(ev) { if (ev && ev.type === 'cancel') ev.preventDefault(); done(false); }
      $('confirm-ok').addEventListener('click', yes);
      $('confirm-cancel').addEventListener('click', no);
      d.addEventListener('cancel', no);
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  // --- token page ---

  var EDIT_FIELDS = {
    description: 'edit-description', access: 'edit-access-options', expires_at: 'edit-expiry',
    rate_limit: 'edit-rate-requests', allowed_ips: 'edit-allowed-ips'
  };

  function showToken(name, fromNavigation) {
    var seq = ++state.tokenSeq;
    showView('view-token');
    document.title = name + ' · Application Tokens · tokengate';
    setText('crumb-name', name);
    $('token-audit-link').href = auditHash(name);
    setText('token-load-error', '');
    setText('token-action-error', '');
    setText('token-action-ok', '');
    setText('ips-error', '');
    setText('ips-ok', '');
    setText('block-error', '');
    setText('edit-ok', '');
    clearFormErrors('edit', EDIT_FIELDS);
    $('block-input').value = '';
    $('block-input').removeAttribute('aria-invalid');
    state.token = null;
    state.ips = [];
    state.ipSelected.clear();
    $('token-body').hidden = true;
    clear($('ip-rows'));
    clear($('token-facts'));
    api('GET', tokenPath(name)).then(function (t) {
      if (seq !== state.tokenSeq) return;
      state.token = t;
      renderToken(t, true);
      $('token-body').hidden = false;
      if (fromNavigation) focusHeading('token-title');
      loadIps();
      loadUsage();
    }, function (e) {
      if (seq !== state.tokenSeq || e.status === 401) return;
      setText('token-load-error', e.status === 404 ? 'There is no token named ' + name + '. It may have been deleted.' : e.message);
    });
  }

  function fact(dl, label, value, cls) {
    dl.appendChild(el('dt', { text: label }));
    dl.appendChild(el('dd', { class: cls || '' }, value));
  }

  function renderToken(t, fillForm) {
    setText('token-title', t.name);
    var st = $('token-status');
    clear(st);
    st.appendChild(statusBadge(t));
    $('token-toggle').textContent = t.status === 'active' ? 'Deactivate' : 'Activate';
    // A revoked secret is public: the token can be activated only after a regenerate.
    var revoked = t.status !== 'active' && t.inactive_reason === 'revoked';
    $('token-toggle').disabled = revoked;
    $('token-toggle').title = revoked ? 'Regenerate the secret first: the reported one is public' : '';
    if (revoked) {
      st.appendChild(el('p', {
        id: 'token-revoked-advice',
        class: 'advice',
        text: 'This token\'s secret was reported to the revocation endpoint as leaked and must be ' +
          'treated as public. Regenerate it, hand the new secret to its owner, then activate it.'
      }));
    }
    var dl = $('token-facts');
    clear(dl);
    var status = el('span', null, statusBadge(t));
    if (t.inactive_reason) status.appendChild(el('span', { class: 'sub reason', text: reasonText(t.inactive_reason) }));
    fact(dl, 'Name', t.name);
    fact(dl, 'ID', el('code', { text: t.id }));
    fact(dl, 'Description', t.description ? t.description : el('span', { class: 'muted', text: '—' }), 'desc');
    fact(dl, 'Access', accessBadges(t.access));
    fact(dl, 'Status', status);
    fact(dl, 'Created', when(t.created_at, null, true));
    fact(dl, 'Activated', when(t.activated_at, null, true));
    fact(dl, 'Deactivated', when(t.deactivated_at, null, true));
    fact(dl, 'Last used', when(t.last_used_at, 'never', true));
    fact(dl, 'Expires', when(t.expires_at, 'never', true));
    fact(dl, 'Rate limit', t.rate_limit ? rateText(t.rate_limit) : el('span', { class: 'muted', text: 'none' }), 'rate-limit');
    var allowed = el('span', { class: t.allowed_ips ? 'allow-list' : 'muted', text: t.allowed_ips ? null : 'any' });
    (t.allowed_ips || []).forEach(function (a) { allowed.appendChild(el('code', { text: a })); });
    fact(dl, 'Allowed IPs', allowed, 'allowed-ips');
    if (t.previous_secret_expires_at) fact(dl, 'Old secret works until', when(t.previous_secret_expires_at, null, true));
    fact(dl, 'Lapses on', when(t.inactive_at, t.status === 'active' ? '—' : 'already inactive', true));
    fact(dl, 'Deleted if unused on', when(t.delete_at, null, true));
    if (fillForm) {
      $('edit-description').value = t.description || '';
      renderAccessChoices('edit-access', t.access);
      $('edit-expiry').value = 'keep';
      syncExpiryDate('edit');
      fillRate('edit', t.rate_limit);
      fillAllowedIps('edit', t.allowed_ips);
      state.editBase = { rate_limit: t.rate_limit || null, allowed_ips: t.allowed_ips || null };
    }
  }

  function toggleToken() {
    var t = state.token;
    if (!t) return;
    var activate = t.status !== 'active';
    setText('token-action-error', '');
    setText('token-action-ok', '');
    if (activate) {
      runToggle(t, true);
      return;
    }
    confirmAction('Deactivate ' + t.name + '?',
      'Every request with this token is refused until it is activated again.',
      'Deactivate token').then(function (ok) {
      if (ok) runToggle(t, false);
    });
  }

  function runToggle(t, activate) {
    $('token-toggle').disabled = true;
    api('POST', '/v1/tokens/' + (activate ? 'activate' : 'deactivate'), { names: [t.name] }).then(function (data) {
      state.token = data.tokens[0];
      renderToken(state.token, false);
      setText('token-action-ok', activate ? 'The token is active.' : 'The token is inactive: every request with it is refused.');
    }, function (e) {
      if (e.status !== 401) setText('token-action-error', actionMessage(e));
    }).then(function () {
      $('token-toggle').disabled = false;
    });
  }

  function regenerateToken() {
    var t = state.token;
    if (!t) return;
    setText('token-action-error', '');
    setText('token-action-ok', '');
    var grace = $('regenerate-grace').value;
    var graceText = $('regenerate-grace').selectedOptions[0].textContent.toLowerCase();
    confirmAction('Regenerate the secret of ' + t.name + '?',
      grace
        ? 'A new secret is created; the current one keeps working ' + graceText + ', then stops. Give every client using this token the new secret within that time.'
        : 'A new secret is created and the current one stops working immediately. Every client using this token must be given the new secret.',
      'Regenerate').then(function (ok) {
      if (!ok) return;
      api('POST', tokenPath(t.name) + '/regenerate', grace ? { grace: grace } : undefined).then(function (data) {
        var secret = data.token;
        delete data.token;
        state.token = data;
        renderToken(data, false);
        setText('token-action-ok', data.previous_secret_expires_at
          ? 'The secret was regenerated; the old one works until ' + untilText(data.previous_secret_expires_at) + '.'
          : 'The secret was regenerated; the old one no longer works.');
        showSecret('New secret for ' + data.name, secret);
      }, function (e) {
        if (e.status !== 401) setText('token-action-error', actionMessage(e));
      });
    });
  }

  function deleteToken() {
    var t = state.token;
    if (!t) return;
    setText('token-action-error', '');
    setText('token-action-ok', '');
    confirmAction('Delete ' + t.name + '?',
      'The token and its IP records are deleted for good. Clients using it are refused at once. This cannot be undone.',
      'Delete token').then(function (ok) {
      if (!ok) return;
      api('DELETE', tokenPath(t.name)).then(function () {
        setText('bulk-error', '');
        setText('bulk-ok', 'Deleted token ' + t.name + '.');
        state.selected.delete(t.name);
        window.location.hash = '#/';
      }, function (e) {
        if (e.status !== 401) setText('token-action-error', actionMessage(e));
      });
    });
  }

  function submitEdit(ev) {
    ev.preventDefault();
    var t = state.token;
    if (!t) return;
    clearFormErrors('edit', EDIT_FIELDS);
    setText('edit-ok', '');
    var description = $('edit-description').value;
    var body = {
      description: description.trim() === '' ? null : description,
      access: checkedAccess('edit-access')
    };
    var expiry = expiryFields('edit');
    if (expiry) Object.keys(expiry).forEach(function (k) { body[k] = expiry[k]; });
    // Absent = unchanged; null clears (no limit / any client IP).
    var rate = rateValue('edit');
    if (rate.error) {
      showFormError('edit', localError('rate_limit', rate.error), EDIT_FIELDS);
      return;
    }
    if (!sameRate(rate.value, state.editBase.rate_limit)) body.rate_limit = rate.value;
    var allowed = ipsValue('edit');
    if (!sameIps(allowed, state.editBase.allowed_ips)) body.allowed_ips = allowed;
    $('edit-save').disabled = true;
    api('PATCH', tokenPath(t.name), body).then(function (updated) {
      state.token = updated;
      renderToken(updated, true);
      setText('edit-ok', 'Saved.');
    }, function (e) {
      if (e.status !== 401) showFormError('edit', e, EDIT_FIELDS);
    }).then(function () {
      $('edit-save').disabled = false;
    });
  }

  // --- IPs ---

  function loadIps() {
    var t = state.token;
    if (!t) return Promise.resolve();
    var seq = state.tokenSeq;
    setText('ips-error', '');
    $('ip-table').setAttribute('aria-busy', 'true');
    return api('GET', tokenPath(t.name) + '/ips').then(function (data) {
      if (seq !== state.tokenSeq) return;
      setIps(data.ips);
    }, function (e) {
      if (seq === state.tokenSeq && e.status !== 401) setText('ips-error', e.message);
    }).then(function () {
      $('ip-table').removeAttribute('aria-busy');
    });
  }

  function setIps(ips) {
    state.ips = ips;
    var present = new Set(ips.map(function (r) { return r.ip; }));
    state.ipSelected.forEach(function (ip) { if (!present.has(ip)) state.ipSelected.delete(ip); });
    renderIps();
  }

  function renderIps() {
    var body = $('ip-rows');
    clear(body);
    state.ips.forEach(function (r) {
      var selected = state.ipSelected.has(r.ip);
      var box = el('input', { type: 'checkbox', checked: selected, 'aria-label': 'Select ' + r.ip, 'data-ip': r.ip });
      var row;
      box.addEventListener('change', function () {
        if (box.checked) state.ipSelected.add(r.ip); else state.ipSelected.delete(r.ip);
        row.classList.toggle('selected', box.checked);
        renderIpSelection();
      });
      var blocked = el('td', { class: 'blocked' });
      if (r.blocked) {
        blocked.appendChild(el('span', { class: 'badge badge-blocked', text: 'Blocked' }));
        if (r.blocked_by && r.blocked_by !== r.ip) {
          blocked.appendChild(el('span', { class: 'sub' }, 'by ', el('code', { text: r.blocked_by })));
        }
        if (r.blocked_at) blocked.appendChild(el('span', { class: 'sub' }, 'since ', when(r.blocked_at)));
      } else {
        blocked.appendChild(el('span', { class: 'muted', text: 'No' }));
      }
      row = el('tr', { class: selected ? 'selected' : '', 'data-ip': r.ip },
        el('td', { class: 'col-check' }, box),
        el('td', { class: 'ip', text: r.ip }),
        el('td', { class: 'when' }, when(r.first_used_at, 'never')),
        el('td', { class: 'when' }, when(r.last_used_at, 'never')),
        el('td', { class: 'num requests', text: String(r.requests) }),
        el('td', { class: 'week' }, sparkline(r.requests_7d)),
        el('td', { class: 'num denied', text: String(r.denied) }),
        blocked
      );
      body.appendChild(row);
    });
    $('ip-empty').hidden = state.ips.length > 0;
    renderIpSelection();
  }

  function renderIpSelection() {
    var n = state.ipSelected.size;
    setText('ip-selection', n === 0 ? 'No addresses selected' : n + ' selected');
    $('ips-block').disabled = n === 0;
    $('ips-unblock').disabled = n === 0;
    $('ips-allow-only').disabled = n === 0;
    var all = $('select-all-ips');
    all.checked = n > 0 && n === state.ips.length;
    all.indeterminate = n > 0 && n < state.ips.length;
  }

  function selectAllIps() {
    var on = $('select-all-ips').checked;
    state.ipSelected.clear();
    if (on) state.ips.forEach(function (r) { state.ipSelected.add(r.ip); });
    renderIps();
  }

  function changeBlocks(block, ips, errorId, input) {
    var t = state.token;
    if (!t) return Promise.resolve(false);
    setText('ips-error', '');
    setText('ips-ok', '');
    setText('block-error', '');
    $('block-input').removeAttribute('aria-invalid');
    return api('POST', tokenPath(t.name) + '/ips/' + (block ? 'block' : 'unblock'), { ips: ips }).then(function (data) {
      if (!input) state.ipSelected.clear();
      setIps(data.ips);
      return true;
    }, function (e) {
      if (e.status === 401) return false;
      setText(errorId, e.message);
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
      return false;
    });
  }

  // Blocking asks first; unblocking does not.
  function confirmBlock(ips) {
    var t = state.token;
    var n = ips.length;
    return confirmAction('Block ' + (n === 1 ? ips[0] : n + ' addresses') + '?',
      'Requests with ' + t.name + ' from ' + (n === 1 ? 'this address' : listText(ips)) +
        ' are refused until unblocked. Other clients are not affected.',
      n === 1 ? 'Block' : 'Block ' + n);
  }

  function blockSelected(block) {
    var ips = Array.from(state.ipSelected);
    if (ips.length === 0 || !state.token) return;
    (block ? confirmBlock(ips) : Promise.resolve(true)).then(function (ok) {
      if (!ok) return;
      $('ips-block').disabled = true;
      $('ips-unblock').disabled = true;
      $('ips-allow-only').disabled = true;
      changeBlocks(block, ips, 'ips-error', null).then(function () { renderIpSelection(); });
    });
  }

  // "Allow only these": the selected addresses become the token's whole allow-list.
  function allowOnlySelected() {
    var t = state.token;
    var ips = Array.from(state.ipSelected);
    if (!t || ips.length === 0) return;
    var seq = state.tokenSeq;
    setText('ips-error', '');
    setText('ips-ok', '');
    var n = ips.length;
    var current = t.allowed_ips ? ' It replaces the current allow-list (' + listText(t.allowed_ips) + ').' : '';
    confirmAction('Allow ' + t.name + ' only from ' + (n === 1 ? ips[0] : 'these ' + n + ' addresses') + '?',
      'Requests with this token from any other client IP than ' + listText(ips) + ' are refused.' + current,
      'Allow only these').then(function (ok) {
      if (!ok || seq !== state.tokenSeq) return;
      $('ips-block').disabled = true;
      $('ips-unblock').disabled = true;
      $('ips-allow-only').disabled = true;
      api('PATCH', tokenPath(t.name), { allowed_ips: ips }).then(function (updated) {
        if (seq !== state.tokenSeq) return;
        state.token = updated;
        renderToken(updated, false);
        // The edit form follows, so that a later save keeps this allow-list.
        fillAllowedIps('edit', updated.allowed_ips);
        state.editBase.allowed_ips = updated.allowed_ips || null;
        setText('edit-allowed_ips-error', '');
        $('edit-allowed-ips').removeAttribute('aria-invalid');
        state.ipSelected.clear();
        renderIps();
        setText('ips-ok', 'The token is now accepted only from ' + listText(updated.allowed_ips || []) + '.');
      }, function (e) {
        if (seq === state.tokenSeq && e.status !== 401) setText('ips-error', actionMessage(e));
      }).then(function () {
        if (seq === state.tokenSeq) renderIpSelection();
      });
    });
  }

  function submitBlock(ev) {
    ev.preventDefault();
    var input = $('block-input');
    var value = input.value.trim();
    setText('block-error', '');
    input.removeAttribute('aria-invalid');
    if (!value) {
      setText('block-error', 'Enter an IP address or a CIDR, such as 203.0.113.0/24.');
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    confirmBlock([value]).then(function (ok) {
      if (!ok) return;
      $('block-submit').disabled = true;
      changeBlocks(true, [value], 'block-error', input).then(function (ok) {
        if (ok) input.value = '';
        $('block-submit').disabled = false;
      });
    });
  }

  function refreshToken() {
    var t = state.token;
    if (!t) return;
    api('GET', tokenPath(t.name)).then(function (fresh) {
      state.token = fresh;
      renderToken(fresh, false);
    }, function (e) {
      if (e.status !== 401) setText('token-action-error', actionMessage(e));
    });
    loadIps();
    loadUsage();
  }

  // --- usage over time (SPEC §12): stacked bars in inline SVG, a table beside them ---

  // The chart's <svg> is in the page; its namespace is the one new SVG elements take.
  function svgNs() { return $('usage-svg').namespaceURI; }
  var REASONS = [
    ['token_expired', 'Expired'],
    ['token_inactive', 'Inactive'],
    ['ip_blocked', 'IP blocked'],
    ['ip_not_allowed', 'IP not allowed'],
    ['no_route', 'No route'],
    ['access_denied', 'Access denied'],
    ['rate_limited', 'Rate limited']
  ];
  var PERIODS = { '24h': { days: 1, text: 'the last 24 hours' }, '7d': { days: 7, text: 'the last 7 days' }, '30d': { days: 30, text: 'the last 30 days' } };
  var DAY_MS = 86400000;

  function svg(tag, attrs) {
    var node = document.createElementNS(svgNs(), tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    for (var i = 2; i < arguments.length; i++) node.appendChild(arguments[i]);
    return node;
  }

  function refusedTotal(b) {
    return REASONS.reduce(function (n, r) { return n + (b.refused[r[0]] || 0); }, 0);
  }

  // A bucket's start as the table and the hover text show it (UTC).
  function bucketText(start, step) {
    var d = new Date(start);
    var day = d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
    return step === '1d' ? day : day + ' ' + pad(d.getUTCHours()) + ':00';
  }

  function bucketDescription(b, step) {
    var parts = REASONS.filter(function (r) { return b.refused[r[0]]; })
      .map(function (r) { return r[1].toLowerCase() + ' ' + b.refused[r[0]]; });
    return bucketText(b.start, step) + ' UTC: ' + b.requests + ' requests, ' + refusedTotal(b) + ' refused' +
      (parts.length ? ' (' + parts.join(', ') + ')' : '');
  }

  function clearUsage() {
    state.usageSeq++;
    ['usage-summary', 'usage-error', 'usage-max', 'usage-first', 'usage-last'].forEach(function (id) { setText(id, ''); });
    clear($('usage-svg'));
    $('usage-svg').removeAttribute('viewBox');
    clear($('usage-rows'));
  }

  function usageQuery(path, period) {
    if (period === '24h') return Promise.resolve('?step=1h');
    // Daily buckets ending today, the gateway's today: the last bucket of its default answer.
    return api('GET', path + '?step=1d').then(function (probe) {
      var today = Date.parse(probe.buckets[probe.buckets.length - 1].start);
      var from = new Date(today - (PERIODS[period].days - 1) * DAY_MS).toISOString().replace('.000Z', 'Z');
      var to = new Date(today).toISOString().replace('.000Z', 'Z');
      return '?step=1d&from=' + encodeURIComponent(from) + '&to=' + encodeURIComponent(to);
    });
  }

  function loadUsage() {
    var t = state.token;
    if (!t) return Promise.resolve();
    var seq = ++state.usageSeq;
    var period = state.usagePeriod;
    var path = tokenPath(t.name) + '/usage';
    setText('usage-error', '');
    $('usage-card').setAttribute('aria-busy', 'true');
    return usageQuery(path, period).then(function (q) {
      return api('GET', path + q);
    }).then(function (data) {
      if (seq !== state.usageSeq) return;
      renderUsage(data, period);
    }, function (e) {
      if (seq === state.usageSeq && e.status !== 401) setText('usage-error', e.message);
    }).then(function () {
      if (seq === state.usageSeq) $('usage-card').removeAttribute('aria-busy');
    });
  }

  function choosePeriod(period) {
    state.usagePeriod = period;
    Array.prototype.forEach.call($('usage-card').querySelectorAll('[data-period]'), function (b) {
      b.setAttribute('aria-pressed', b.getAttribute('data-period') === period ? 'true' : 'false');
    });
    loadUsage();
  }

  function renderUsage(data, period) {
    var buckets = data.buckets;
    var step = data.step;
    var totalReq = 0, totalRef = 0, max = 0;
    buckets.forEach(function (b) {
      var r = refusedTotal(b);
      totalReq += b.requests;
      totalRef += r;
      max = Math.max(max, b.requests + r);
    });
    setText('usage-summary', totalReq + ' requests and ' + totalRef + ' refused in ' + PERIODS[period].text +
      (step === '1d' ? ', by UTC day.' : ', by hour.'));
    setText('usage-max', max > 0 ? 'max ' + max : '');
    setText('usage-first', buckets.length ? bucketText(buckets[0].start, step) : '');
    setText('usage-last', buckets.length ? bucketText(buckets[buckets.length - 1].start, step) : '');
    // One unit of width per bucket, 100 of height; the bars stretch to the frame's width.
    var n = buckets.length;
    var chart = $('usage-svg');
    clear(chart);
    chart.setAttribute('viewBox', '0 0 ' + Math.max(n, 1) + ' 100');
    chart.setAttribute('aria-label', $('usage-summary').textContent);
    chart.setAttribute('data-step', step);
    buckets.forEach(function (b, i) {
      var g = svg('g', { class: 'bar', 'data-start': b.start, 'data-requests': b.requests, 'data-refused': refusedTotal(b) },
        svg('title', {}));
      g.firstChild.textContent = bucketDescription(b, step);
      var y = 100;
      var segs = [['requests', b.requests]].concat(REASONS.map(function (r) { return [r[0], b.refused[r[0]] || 0]; }));
      // Full height for the hover target, then the stacked segments from the bottom up.
      g.appendChild(svg('rect', { x: i, y: 0, width: 1, height: 100, class: 'hit', fill: 'transparent' }));
      segs.forEach(function (s) {
        if (!s[1] || !max) return;
        var h = s[1] / max * 100;
        y -= h;
        g.appendChild(svg('rect', { x: i + 0.1, y: y, width: 0.8, height: h, class: 'seg-' + s[0], 'data-reason': s[0], 'data-n': s[1] }));
      });
      chart.appendChild(g);
    });
    var legend = $('usage-legend');
    clear(legend);
    [['requests', 'Admitted']].concat(REASONS).forEach(function (r) {
      legend.appendChild(el('li', null, svg('svg', { viewBox: '0 0 1 1' }, svg('rect', { width: 1, height: 1, class: 'seg-' + r[0] })), r[1]));
    });
    var rows = $('usage-rows');
    clear(rows);
    buckets.forEach(function (b) {
      var parts = REASONS.filter(function (r) { return b.refused[r[0]]; })
        .map(function (r) { return r[1] + ' ' + b.refused[r[0]]; });
      rows.appendChild(el('tr', { 'data-start': b.start },
        el('td', { class: 'when', text: bucketText(b.start, step) }),
        el('td', { class: 'num', text: String(b.requests) }),
        el('td', { class: 'num', text: String(refusedTotal(b)) }),
        el('td', { text: parts.join(', ') })));
    });
  }

  // The IP table's 7-day sparkline: one bar per day, oldest first, today last.
  function sparkline(days) {
    days = days || [];
    var max = days.reduce(function (m, v) { return Math.max(m, v); }, 0);
    var label = 'Requests per day, last 7 days: ' + days.join(', ');
    var chart = svg('svg', { viewBox: '0 0 7 10', preserveAspectRatio: 'none', role: 'img', 'aria-label': label });
    days.forEach(function (v, i) {
      var h = max ? Math.max(v / max * 10, v ? 1 : 0) : 0;
      chart.appendChild(v
        ? svg('rect', { x: i + 0.1, y: 10 - h, width: 0.8, height: h, class: 'seg-requests', 'data-n': v })
        : svg('rect', { x: i + 0.1, y: 9.5, width: 0.8, height: 0.5, class: 'empty-day', 'data-n': 0 }));
    });
    return el('span', { class: 'spark', title: label }, chart);
  }

  // --- audit log ---

  function auditHash(token) {
    return token ? '#/audit?token=' + encodeURIComponent(token) : '#/audit';
  }

  // The filter lives in the address (#/audit?token=NAME), so it can be linked and goes back.
  function auditFor(token) {
    var hash = auditHash(token);
    if (window.location.hash === hash) showAudit(token, false);
    else window.location.hash = hash;
  }

  function showAudit(token, fromNavigation) {
    showView('view-audit');
    document.title = (token ? token + ' · ' : '') + 'Audit log · tokengate';
    if (fromNavigation) focusHeading('audit-title');
    state.auditToken = token;
    $('audit-token').value = token;
    $('audit-all').hidden = !token;
    loadAudit(Number($('audit-page-size').value));
  }

  // The API answers the newest `limit` entries and has no cursor: "show more" asks again for
  // a longer list (up to the API's maximum).
  function loadAudit(limit) {
    var seq = ++state.auditSeq;
    var params = new URLSearchParams();
    if (state.auditToken) params.set('token', state.auditToken);
    params.set('limit', String(limit));
    setText('audit-error', '');
    setText('audit-filter-error', '');
    $('audit-token').removeAttribute('aria-invalid');
    $('audit-table').setAttribute('aria-busy', 'true');
    return api('GET', '/v1/audit?' + params.toString()).then(function (data) {
      if (seq !== state.auditSeq) return;
      state.audit = data.entries;
      state.auditLimit = limit;
      renderAudit();
    }, function (e) {
      if (seq !== state.auditSeq || e.status === 401) return;
      if (e.field === 'token') {
        setText('audit-filter-error', e.message);
        $('audit-token').setAttribute('aria-invalid', 'true');
      } else {
        setText('audit-error', e.message);
      }
    }).then(function () {
      if (seq === state.auditSeq) $('audit-table').removeAttribute('aria-busy');
    });
  }

  // `details` (a JSON object) as "key value" pairs, all text; a null value reads "none".
  function detailsNode(details) {
    var keys = details && typeof details === 'object' ? Object.keys(details) : [];
    if (keys.length === 0) return el('span', { class: 'muted', text: '—' });
    var box = el('span', { class: 'details' });
    keys.forEach(function (k) {
      var v = details[k];
      var value = v === null
        ? el('span', { class: 'v muted', text: 'none' })
        : el('span', { class: 'v', text: typeof v === 'string' ? v : JSON.stringify(v) });
      box.appendChild(el('span', { class: 'kv' }, el('span', { class: 'k', text: k }), ' ', value));
    });
    return box;
  }

  function renderAudit() {
    var body = $('audit-rows');
    clear(body);
    state.audit.forEach(function (a) {
      body.appendChild(el('tr', { 'data-action': a.action, 'data-token': a.token },
        el('td', { class: 'when at' }, when(a.at)),
        el('td', { class: 'actor', text: a.actor }),
        el('td', { class: 'ip source-ip' }, a.source_ip ? a.source_ip : el('span', { class: 'muted', text: '—' })),
        el('td', { class: 'action' }, el('span', { class: 'badge badge-action', text: a.action })),
        el('td', { class: 'name token' }, el('a', { href: '#/tokens/' + encodeURIComponent(a.token), text: a.token })),
        el('td', { class: 'details' }, detailsNode(a.details))
      ));
    });
    var n = state.audit.length;
    var empty = $('audit-empty');
    empty.hidden = n > 0;
    empty.textContent = state.auditToken
      ? 'No audit entries for a token named ' + state.auditToken + '.'
      : 'No audit entries yet.';
    // A full answer may have more behind it.
    var more = n >= state.auditLimit && state.auditLimit < MAX_AUDIT_LIMIT;
    var capped = n >= MAX_AUDIT_LIMIT;
    setText('audit-count', n === 0 ? '' : (n === 1 ? '1 entry' : n + ' entries') +
      (more ? ', newest first; older ones to show' : capped ? ': the newest ' + MAX_AUDIT_LIMIT + ', the most the API returns' : ''));
    $('audit-more').hidden = !more;
  }

  // --- wiring ---

  var filterTimer = null;

  function init() {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', signOut);

    $('filter-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      window.clearTimeout(filterTimer);
      loadList('fresh');
    });
    $('filter-q').addEventListener('input', function () {
      window.clearTimeout(filterTimer);
      filterTimer = window.setTimeout(function () { loadList('fresh'); }, 250);
    });
    $('filter-status').addEventListener('change', function () { loadList('fresh'); });
    $('page-size').addEventListener('change', function () { loadList('fresh'); });
    Array.prototype.forEach.call($('token-table').querySelectorAll('button.sort'), function (btn) {
      btn.addEventListener('click', function () { sortBy(btn.getAttribute('data-sort')); });
    });
    $('select-all-tokens').addEventListener('change', selectAllTokens);
    $('bulk-activate').addEventListener('click', function () { bulk(true); });
    $('bulk-deactivate').addEventListener('click', function () { bulk(false); });
    $('load-more').addEventListener('click', function () { loadList('more'); });

    $('audit-filter-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      auditFor($('audit-token').value.trim());
    });
    $('audit-all').addEventListener('click', function () { auditFor(''); });
    $('audit-page-size').addEventListener('change', function () { loadAudit(Number($('audit-page-size').value)); });
    $('audit-more').addEventListener('click', function () {
      loadAudit(Math.min(MAX_AUDIT_LIMIT, state.auditLimit + Number($('audit-page-size').value)));
    });
    window.setInterval(refreshTimes, 30000);

    $('open-create').addEventListener('click', openCreate);
    $('create-form').addEventListener('submit', submitCreate);
    $('create-expiry').addEventListener('change', function () { syncExpiryDate('create'); });
    $('edit-expiry').addEventListener('change', function () { syncExpiryDate('edit'); });
    $('create-cancel').addEventListener('click', function () { $('create-dialog').close(); });

    $('secret-copy').addEventListener('click', copySecret);
    $('secret-done').addEventListener('click', closeSecret);
    $('secret-dialog').addEventListener('close', onSecretClosed);
    // Escape must not throw the secret away by accident: the button closes the dialog.
    $('secret-dialog').addEventListener('cancel', function (ev) { ev.preventDefault(); });

    $('token-toggle').addEventListener('click', toggleToken);
    $('token-regenerate').addEventListener('click', regenerateToken);
    $('token-delete').addEventListener('click', deleteToken);
    $('edit-form').addEventListener('submit', submitEdit);
    $('ips-refresh').addEventListener('click', refreshToken);
    Array.prototype.forEach.call($('usage-card').querySelectorAll('[data-period]'), function (b) {
      b.addEventListener('click', function () { choosePeriod(b.getAttribute('data-period')); });
    });
    $('select-all-ips').addEventListener('change', selectAllIps);
    $('ips-block').addEventListener('click', function () { blockSelected(true); });
    $('ips-unblock').addEventListener('click', function () { blockSelected(false); });
    $('ips-allow-only').addEventListener('click', allowOnlySelected);
    $('block-form').addEventListener('submit', submitBlock);

    window.addEventListener('hashchange', function () { route(true); });
    route(false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
}());
