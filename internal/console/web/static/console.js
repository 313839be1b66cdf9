// paystream console: the page's only script, no library.
//
// The shell holds no data. This script keeps the admin token in
// sessionStorage (this tab only), fetches the server-rendered fragment of
// the page in the address bar with the token as an Authorization header,
// and puts it in <main>. Links and GET forms navigate without reloading;
// buttons with data-action call the JSON admin API and show the outcome
// above the page. A token in the URL's fragment (#token=…, as `make run`
// prints it) is taken once and removed from the address bar.
(function () {
  'use strict';

  var KEY = 'paystream-console-token';
  var main = document.getElementById('main');
  var login = document.getElementById('login');
  var loginMsg = document.getElementById('login-msg');
  var flash = document.getElementById('flash');
  var dialog = document.getElementById('confirm');
  var timer = null;
  var loads = 0;

  function token() { return sessionStorage.getItem(KEY) || ''; }

  function takeTokenFromURL() {
    var m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    // Out of the address bar and the history at once.
    history.replaceState(null, '', location.pathname + location.search);
  }

  function showLogin(message) {
    clearTimeout(timer);
    main.replaceChildren();
    flash.replaceChildren();
    document.body.classList.add('logged-out');
    login.hidden = false;
    loginMsg.textContent = message || '';
    document.title = 'Log in · paystream console';
    document.getElementById('token').focus();
  }

  function refused() {
    sessionStorage.removeItem(KEY);
    showLogin('That token was refused: no data is shown without the admin token.');
  }

  // fragmentPath maps the address bar to the fragment's URL.
  function fragmentPath() {
    var p = location.pathname === '/' ? '/overview' : location.pathname;
    return p;
  }

  function markNav(page) {
    document.querySelectorAll('#nav a').forEach(function (a) {
      var on = page === a.dataset.page || (a.dataset.page === '/orders' && page.indexOf('/orders/') === 0);
      a.classList.toggle('active', on);
    });
  }

  function load() {
    clearTimeout(timer);
    if (!token()) { showLogin(''); return; }
    var n = ++loads;
    var page = fragmentPath();
    fetch('/ui' + page + location.search, { headers: { Authorization: 'Bearer ' + token() }, cache: 'no-store' })
      .then(function (r) {
        if (n !== loads) return null;
        if (r.status === 401) { refused(); return null; }
        return r.text().then(function (html) {
          if (n !== loads) return;
          login.hidden = true;
          document.body.classList.remove('logged-out');
          // Keep open raw events open across a refresh of the same page.
          var open = [];
          main.querySelectorAll('details[open][data-seq]').forEach(function (d) { open.push(d.dataset.seq); });
          // The server rendered it with html/template, which escaped every
          // value; it holds no script (and the CSP allows none inline).
          main.innerHTML = html;
          open.forEach(function (s) {
            var d = main.querySelector('details[data-seq="' + s + '"]');
            if (d) d.open = true;
          });
          var root = main.firstElementChild;
          var data = root ? root.dataset : {};
          document.title = (data.title ? data.title + ' · ' : '') + 'paystream console';
          if (data.location) history.replaceState(null, '', data.location);
          if (top) { window.scrollTo(0, 0); top = false; }
          markNav(fragmentPath());
          var every = Number(data.refresh || 0);
          if (every > 0) timer = setTimeout(refresh, every * 1000);
        });
      })
      .catch(function (err) {
        if (n !== loads) return;
        main.replaceChildren(el('div', { class: 'page' }, [el('p', { class: 'error' }, 'The console did not answer (' + err.message + '); retrying.')]));
        timer = setTimeout(load, 5000);
      });
  }

  // refresh reloads a self-refreshing page unless the reader is busy in it.
  function refresh() {
    if (dialog.open || document.activeElement && /^(INPUT|SELECT)$/.test(document.activeElement.tagName)) {
      timer = setTimeout(refresh, 1000);
      return;
    }
    load();
  }

  // top is set by a navigation, so that the new page starts at its top; a
  // refresh keeps the reader's place.
  var top = false;

  function go(url) {
    history.pushState(null, '', url);
    flash.replaceChildren();
    top = true;
    load();
  }

  // el builds an element; text is set as text, never parsed as HTML.
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (typeof children === 'string') e.textContent = children;
    else (children || []).forEach(function (c) { if (c) e.append(c); });
    return e;
  }

  function orderLink(id) {
    return id ? el('a', { href: '/orders/' + encodeURIComponent(id), class: 'mono' }, id) : document.createTextNode('—');
  }

  function api(method, path, body) {
    var opts = { method: method, headers: { Authorization: 'Bearer ' + token(), Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      if (r.status === 401) { refused(); throw new Error('token refused'); }
      return r.json().then(function (j) {
        if (!r.ok) throw new Error(j.error || r.statusText);
        return j;
      });
    });
  }

  function box(kind, title) {
    var b = el('section', { class: 'outcome ' + kind }, [
      el('button', { type: 'button', class: 'link close', 'data-action': 'dismiss', 'aria-label': 'dismiss' }, '×'),
      el('h2', {}, title)
    ]);
    flash.replaceChildren(b);
    return b;
  }

  function showError(title, err) {
    box('bad', title).append(el('p', { class: 'error' }, err.message));
  }

  // confirmThen asks in the page's own dialog, then runs fn.
  function confirmThen(message, ok, fn) {
    document.getElementById('confirm-msg').textContent = message;
    document.getElementById('confirm-ok').textContent = ok || 'OK';
    dialog.returnValue = '';
    dialog.onclose = function () {
      dialog.onclose = null;
      if (dialog.returnValue === 'ok') fn();
    };
    dialog.showModal();
  }

  function reapply(button) {
    var id = button.dataset.order;
    button.disabled = true;
    api('POST', '/api/v1/orders/' + encodeURIComponent(id) + '/replay').then(function (res) {
      var b = box(res.error ? 'bad' : 'ok', 'Re-applied ' + res.summary.events + ' events of order ' + id);
      b.id = 'reapply-result';
      b.append(el('ul', { class: 'changes' }, res.changes.map(function (c) { return el('li', {}, c); })));
      if (res.error) b.append(el('p', { class: 'error' }, res.error));
      b.append(el('table', { class: 'list' }, [
        el('thead', {}, [el('tr', {}, ['event #', 'type', 'verified', 'result', 'detail'].map(function (h) { return el('th', {}, h); }))]),
        el('tbody', {}, res.events.map(function (e) {
          var a = e.applied || {};
          var detail = [];
          if (a.status_to) detail.push(a.status_from + ' → ' + a.status_to);
          if (a.first_completed) detail.push('first completed');
          if (a.late_recorded) detail.push('late payment ' + a.late_recorded.join(', '));
          if (a.planned) detail.push('planned ' + a.planned.join(', '));
          if (a.warning) detail.push(a.warning);
          if (a.error) detail.push(a.error);
          return el('tr', {}, [
            el('td', {}, String(e.seq)), el('td', {}, e.type),
            el('td', {}, e.verified ? '✔' : '✘'),
            el('td', {}, [el('span', { class: 'badge r-' + (a.result || '') }, a.result || '—')]),
            el('td', {}, detail.join('; '))
          ]);
        }))
      ]));
      load();
    }).catch(function (err) { showError('Re-apply failed', err); })
      .finally(function () { button.disabled = false; });
  }

  function redrive(button) {
    var seqs = button.dataset.seqs.split(',').filter(Boolean).map(Number);
    button.disabled = true;
    api('POST', '/api/v1/dead-letters/redrive', { seqs: seqs }).then(function (res) {
      var b = box(res.failed ? 'bad' : 'ok', 'Redrove ' + res.redriven + ' of ' + seqs.length + ' dead letters');
      b.id = 'redrive-result';
      var rows = res.results.map(function (r) {
        var line = r.redriven || {};
        var outcome = el('td', { class: 'outcome-state', 'data-dlq-seq': String(r.dlq_seq) });
        if (r.error) {
          outcome.textContent = r.error;
          outcome.className += ' bad';
        } else {
          outcome.textContent = 'stored as event #' + line.seq + '; waiting for the workers…';
          watchOutcome(line.seq, outcome, Date.now());
        }
        return el('tr', {}, [el('td', {}, String(r.dlq_seq)), el('td', {}, line.type || ''), el('td', {}, [orderLink(line.order_id)]), outcome]);
      });
      b.append(el('table', { class: 'list' }, [
        el('thead', {}, [el('tr', {}, ['DLQ #', 'type', 'order', 'outcome'].map(function (h) { return el('th', {}, h); }))]),
        el('tbody', {}, rows)
      ]));
      load();
    }).catch(function (err) { showError('Redrive failed', err); })
      .finally(function () { button.disabled = false; });
  }

  // watchOutcome polls what the workers made of a redriven copy.
  function watchOutcome(seq, cell, since) {
    api('GET', '/api/v1/events/' + seq + '/outcome').then(function (o) {
      if (!cell.isConnected) return;
      if (o.state === 'waiting') {
        if (Date.now() - since > 120000) {
          cell.textContent = 'stored as event #' + seq + '; not processed after 2 min (ack floor ' + o.ack_floor + ')';
          return;
        }
        setTimeout(function () { watchOutcome(seq, cell, since); }, 500);
        return;
      }
      if (o.state === 'dead_lettered') {
        cell.textContent = '✘ event #' + seq + ' dead-lettered again as DLQ #' + o.dead_letter.dlq_seq + ': ' + o.dead_letter.reason;
        cell.className += ' bad';
      } else {
        cell.textContent = '✔ event #' + seq + ' processed';
        cell.className += ' ok';
      }
      cell.dataset.state = o.state;
    }).catch(function (err) { cell.textContent = 'outcome unknown: ' + err.message; });
  }

  document.addEventListener('click', function (ev) {
    var b = ev.target.closest('[data-action]');
    if (b) {
      ev.preventDefault();
      var a = b.dataset.action;
      if (a === 'logout') { sessionStorage.removeItem(KEY); showLogin('Logged out.'); return; }
      if (a === 'dismiss') { flash.replaceChildren(); return; }
      var run = a === 'reapply' ? reapply : a === 'redrive' ? redrive : null;
      if (run) confirmThen(b.dataset.confirm, b.dataset.ok, function () { run(b); });
      return;
    }
    var link = ev.target.closest('a[href]');
    if (!link || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    var href = link.getAttribute('href');
    if (href.charAt(0) !== '/' || href.charAt(1) === '/' || link.target) return;
    ev.preventDefault();
    go(href);
  });

  document.addEventListener('submit', function (ev) {
    var f = ev.target;
    if (f.id === 'login-form') {
      ev.preventDefault();
      sessionStorage.setItem(KEY, f.elements.token.value.trim());
      f.reset();
      load();
      return;
    }
    if ((f.getAttribute('method') || '').toLowerCase() !== 'get') return;
    ev.preventDefault();
    var params = new URLSearchParams();
    new FormData(f).forEach(function (v, k) { if (v !== '') params.append(k, v); });
    var q = params.toString();
    go(f.getAttribute('action') + (q ? '?' + q : ''));
  });

  window.addEventListener('popstate', function () { flash.replaceChildren(); top = true; load(); });

  takeTokenFromURL();
  load();
})();
