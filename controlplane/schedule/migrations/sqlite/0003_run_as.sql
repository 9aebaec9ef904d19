-- What the schedule may do when it fires: the grants (JSON) of whoever
-- last saved or resumed it.
ALTER TABLE schedules ADD COLUMN run_as TEXT NOT NULL DEFAULT '[]';
