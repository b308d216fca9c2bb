// The --mam-ratio report: each round's ratio and the median over rounds.
import { expect } from 'chai';
import { mamRatioTable } from '../../bench/compare.ts';
import { median } from '../../bench/report.ts';

describe('bench: --mam-ratio report', function () {
  it('takes the median of an odd and of an even number of values, and of none', function () {
    expect(median([3, 1, 2])).to.equal(2);
    expect(median([4, 1, 3, 2])).to.equal(2.5);
    expect(median([])).to.equal(null);
  });

  it("shows each round's rates and ratio, and the median of the rounds that have both rates", function () {
    const table = mamRatioTable(
      new Map([
        [
          'chorus',
          [
            { off: 20000, on: 15000 },
            { off: 30000, on: 18000 },
            { off: 25000, on: null },
          ],
        ],
        ['prosody', [{ off: 4000, on: 160 }]],
      ]),
    );
    const [header, , chorus, prosody] = table.split('\n');
    expect(header).to.match(/^server +round 1 off -> on msg\/s +ratio 1 .*round 3 .*median ratio$/);
    const cells = (line: string | undefined) => line!.trim().split(/ {2,}/);
    // 75% and 60%: the third round failed with archiving on and is left out.
    expect(cells(chorus)).to.deep.equal([
      'chorus',
      '20000 -> 15000',
      '75%',
      '30000 -> 18000',
      '60%',
      '25000 -> -',
      '-',
      '68%',
    ]);
    expect(cells(prosody)).to.deep.equal(['prosody', '4000 -> 160', '4%', '-', '-', '-', '-', '4%']);
  });
});
