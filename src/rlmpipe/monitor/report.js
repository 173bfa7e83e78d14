(function () {
  function each(list, action) { Array.prototype.forEach.call(list, action); }
  function key(cell) {
    var v = cell.getAttribute('data-value'), plain = v !== null;
    if (!plain) { v = cell.textContent.trim(); }
    var n = plain ? v : v.replace(/,/g, '');
    return n !== '' && !isNaN(n) ? Number(n) : v.toLowerCase();
  }
  function compare(x, y) {
    if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
    return x < y ? -1 : x > y ? 1 : 0;
  }
  each(document.querySelectorAll('table.sortable'), function (table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    each(heads, function (th, index) {
      th.title = 'sort';
      th.addEventListener('click', function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var order = th.getAttribute('data-order');
        var first = table.getAttribute('data-first-order') || 'desc';
        var dir = order ? (order === 'asc' ? 'desc' : 'asc') : first;
        rows.sort(function (a, b) {
          return compare(key(a.cells[index]), key(b.cells[index])) * (dir === 'asc' ? 1 : -1);
        });
        each(heads, function (h) { h.removeAttribute('data-order'); });
        th.setAttribute('data-order', dir);
        each(rows, function (row) { body.appendChild(row); });
      });
    });
  });
  function filter(id) {
    var table = document.getElementById(id), absent = false, tags = [], shown = 0;
    if (!table) { return; }
    each(document.querySelectorAll('[data-filter-table="' + id + '"]'), function (control) {
      if (control.hasAttribute('data-filter-mode')) { absent = control.value === 'absent'; }
      else if (control.value) { tags.push(control); }
    });
    each(table.tBodies[0].rows, function (row) {
      var visible = tags.every(function (control) {
        var values = (row.getAttribute('data-' + control.getAttribute('data-filter-key')) || '').split('|');
        return (values.indexOf(control.value) >= 0) !== absent;
      });
      row.style.display = visible ? '' : 'none';
      if (visible) { shown++; }
    });
    each(document.querySelectorAll('[data-shown-table="' + id + '"]'), function (count) {
      count.textContent = shown;
    });
  }
  var filtered = {};
  each(document.querySelectorAll('[data-filter-table]'), function (control) {
    var id = control.getAttribute('data-filter-table');
    filtered[id] = true;
    control.addEventListener('change', function () { filter(id); });
  });
  Object.keys(filtered).forEach(filter);
})();
