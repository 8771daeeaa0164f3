-- Orthanc auto-routing for ctnode: every structured report stored in Orthanc that ctnode did not write itself
-- (a radiologist's review saved from OHIF over DICOMweb, a report sent by a workstation) is sent to ctnode,
-- which reads its verdicts on ctnode's findings as feedback and stores any other SR as usual.
--
-- Load it with "LuaScripts": ["forward-reader-sr.lua"] in Orthanc's configuration (a path relative to the
-- configuration file, or absolute). The modality must be declared under "DicomModalities".
-- Logs nothing: the instance's tags name a patient and a reader.

-- The entry of "DicomModalities" that is ctnode, and ctnode's own calling AE title (its dicom.ae_title), with
-- which it stores its results back: those SRs are not sent back to it.
local CTNODE_MODALITY = "ctnode"
local CTNODE_AE_TITLE = "CTNODE"

local function CameFromCtnode(origin)
  return origin ~= nil
    and origin["RequestOrigin"] == "DicomProtocol"
    and origin["RemoteAet"] == CTNODE_AE_TITLE
end

-- Sent by an asynchronous C-STORE job of Orthanc's REST API rather than SendToModality: a send that fails (ctnode
-- down) is then a failed job in Orthanc's job list (GET /jobs?expand), which POST /jobs/<id>/resubmit sends again.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags["Modality"] == "SR" and not CameFromCtnode(origin) then
    RestApiPost("/modalities/" .. CTNODE_MODALITY .. "/store",
                DumpJson({ Resources = { instanceId }, Asynchronous = true }, true))
  end
end
