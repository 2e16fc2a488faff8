// Tables whose columns are declared once and whose extra fields show up by themselves:
// a field the API adds later (a new host status field, say) becomes a column of its own.
import { fill, formatField, h, humanize, show, syncRows } from './dom.js';

/**
 * Render ``items`` into ``table`` (thead + tbody). ``columns``: [{key, label, cell?}],
 * where ``cell(item)`` returns a Node or a string (default: the field, shown as text).
 * Fields of the items that no column and no entry of ``known`` names get a column too
 * (unless ``extras`` is false: a list that shows a chosen few fields of bigger objects),
 * their values formatted by their names (``now``: the time "… ago" is counted from). A
 * column marked ``optional`` shows only when some item has a value (not null) for it.
 */
export function renderTable(table, items, columns, key, known = [], extras = true, now = null) {
  const named = new Set([...columns.map((c) => c.key), ...known]);
  const present = (field) => items.some((item) => item[field] !== undefined && item[field] !== null);
  columns = columns.filter((c) => !c.optional || present(c.key));
  const extra = [];
  for (const item of extras ? items : []) {
    for (const field of Object.keys(item)) {
      if (!named.has(field) && !extra.includes(field)) extra.push(field);
    }
  }
  const all = [...columns, ...extra.map((field) => ({
    key: field, label: humanize(field), cell: (item) => formatField(field, item[field], now),
  }))];
  const signature = all.map((c) => c.key).join('|');
  if (table.dataset.columns !== signature) {
    table.dataset.columns = signature;
    const head = table.tHead || table.createTHead();
    fill(head, h('tr', {}, all.map((c) => h('th', { scope: 'col', class: c.className }, c.label))));
    fill(table.tBodies[0] || table.createTBody());
  }
  const body = table.tBodies[0];
  syncRows(
    body,
    items,
    key,
    () => h('tr', {}, all.map((c) => h(c.header ? 'th' : 'td', {
      'data-label': c.label, class: c.className, scope: c.header ? 'row' : null,
    }))),
    (row, item) => {
      all.forEach((c, i) => {
        const cell = row.cells[i];
        const value = c.cell ? c.cell(item) : show(item[c.key]);
        if (value instanceof Node) {
          const signature = value.outerHTML || value.textContent;
          if (cell.dataset.sig !== signature) {
            cell.dataset.sig = signature;
            fill(cell, value);
          }
        } else if (cell.textContent !== value || cell.childElementCount) {
          delete cell.dataset.sig;
          cell.textContent = value;
        }
      });
    },
  );
  let empty = table.parentElement.querySelector(':scope > .empty');
  if (!items.length) {
    if (!empty) {
      empty = h('p', { class: 'empty' }, table.dataset.empty || 'Nothing to show.');
      table.after(empty);
    }
  } else if (empty) empty.remove();
}
